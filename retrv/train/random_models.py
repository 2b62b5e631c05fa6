"""Real architectures with tiny random weights, built from configs in code (no download).

Tests, benchmarks and the tiny-world recipe use these: a byte-level BPE tokenizer trained in code,
CLIP/SigLIP dual encoders, Qwen2.5-VL / Qwen3-VL / Qwen3.5 reasoners and a LLaVA, each saved as a directory
that the normal loaders (`clip:DIR`, `--reasoner DIR`) open like any downloaded model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5-VL-Instruct's chat template, without the video and tool parts.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VLM_ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
REASONER_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<inspection-index-start>",
    "<inspection-index-end>",
    "<|icm|>",
    "<answer>",
    "</answer>",
]

DEFAULT_CORPUS = [
    "a photo of a cat",
    "a cup of coffee on a table",
    "a rocket launching into the sky",
    "a small red circle left of a blue square",
    "a large green triangle above a yellow circle",
    "Is this candidate relevant to the query? Answer Yes or No.",
    "Yes",
    "No",
    "True",
    "False",
    "The ideal result shows the query. Candidate 1 is wrong. Candidate 2 matches. <answer>2</answer>",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 [1] [2] [3] user assistant system",
]


def train_byte_bpe_tokenizer(
    corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 400, special_tokens: list[str] | None = None
) -> Any:
    """A byte-level BPE tokenizer (PreTrainedTokenizerFast) trained on `corpus` in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", *(special_tokens if special_tokens is not None else REASONER_SPECIAL_TOKENS)]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # the library never prints
    )
    tk.train_from_iterator(list(corpus), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token=specials[1])
    if "<|im_end|>" in specials:
        tok.eos_token = "<|im_end|>"
    tok.add_special_tokens({"additional_special_tokens": specials[2:]})
    return tok


def build_random_dual_encoder(
    out_dir: str | Path, kind: str = "clip", hidden: int = 64, image_size: int = 64, seed: int = 0
) -> Path:
    """Save a random CLIPModel or SiglipModel (+ tokenizer and image processor) to `out_dir`."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = train_byte_bpe_tokenizer(special_tokens=["<|endoftext|>", "<|startoftext|>"])
    text = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(tok),
        max_position_embeddings=64,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=16,
    )
    if kind == "clip":
        text.update(
            bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            pad_token_id=tok.pad_token_id,
        )
        model: Any = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
        # Like the real CLIP tokenizer, wrap every text in <|startoftext|> ... <|endoftext|>: CLIP pools the text at the
        # first end token, so without it a padded batch and a single text would pool different positions.
        _wrap_in_start_end_tokens(tok, "<|startoftext|>", "<|endoftext|>")
        processor: Any = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"unknown tiny dual encoder kind {kind!r}; expected 'clip' or 'siglip'")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _wrap_in_start_end_tokens(tok: Any, start: str, end: str) -> None:
    from tokenizers import processors

    ids = [(start, tok.convert_tokens_to_ids(start)), (end, tok.convert_tokens_to_ids(end))]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single=f"{start} $A {end}", special_tokens=ids)


def build_random_vlm(
    out_dir: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_depth: int = 1,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    vocab_size: int = 400,
    seed: int = 0,
    rope_theta: float = 10000.0,
    mrope_section: Sequence[int] | None = None,
    hub_layout: bool = False,
    architecture: str = "qwen2_5_vl",
) -> Path:
    """Save a random Qwen2_5_VLForConditionalGeneration (or, with `architecture="qwen3_vl"`, a
    Qwen3VLForConditionalGeneration: 32-px merged patches, interleaved M-RoPE, DeepStack features from every
    vision layer into the first text layers; "qwen3_vl_moe", the same with mixture-of-experts FFNs; "qwen3_5",
    Qwen3.5's Gated DeltaNet layers and a last full-attention layer, no DeepStack; "qwen3_5_moe", the same with
    experts) with its tokenizer and image processor.

    `hub_layout` saves it the way Qwen ships an instruct model: the tokenizer has Qwen's own special tokens only
    (retrv's tags are plain text to it) and a chat template; otherwise retrv's role tokens are special tokens,
    as in a checkpoint `retrv train` writes.

    `rope_theta`, `mrope_section` (rotary pairs given to the temporal, height and width axes, summing to
    head_dim / 2; default about a third each): M-RoPE gives the width axis the lowest frequencies. A small
    theta makes every pair turn fast, which lets left and right differ across a small image but leaves no
    slow pair for attention by content over a long prompt (copying a query 100 tokens back fails). A model
    trained from scratch wants both: a theta near 1e3 and most pairs on the width axis (e.g. 1, 1, 6).

    The processor itself cannot be saved without torchvision (transformers 5.x), so the tokenizer and
    the image processor are saved side by side; `rerank.checkpoint` rebuilds the processor.
    """
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if architecture not in VLM_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(VLM_ARCHITECTURES)}, got {architecture!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    specials = QWEN_SPECIAL_TOKENS if hub_layout else REASONER_SPECIAL_TOKENS
    tok = train_byte_bpe_tokenizer(corpus, vocab_size, specials)
    if hub_layout:
        tok.chat_template = QWEN_CHAT_TEMPLATE
    head_dim = hidden // heads
    half = head_dim // 2
    mrope = list(mrope_section) if mrope_section else [half - 2 * (half // 3), half // 3, half // 3]
    if len(mrope) != 3 or sum(mrope) != half or min(mrope) < 0:
        raise ValueError(f"mrope_section must be 3 non-negative ints summing to head_dim / 2 = {half}, got {mrope}")
    ids = tok.convert_tokens_to_ids
    special_ids: dict[str, Any] = {
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
    }
    text_config: dict[str, Any] = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=len(tok),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta), "mrope_section": mrope},
        tie_word_embeddings=True,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
    )
    vision_config: dict[str, Any] = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_heads=4,
        out_hidden_size=hidden,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    token_ids = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model: Any
    if architecture != "qwen2_5_vl":
        import transformers

        text_config["head_dim"] = head_dim
        text_config["rope_parameters"] = {**text_config["rope_parameters"], "mrope_interleaved": True}
        if architecture.endswith("_moe"):  # every layer sparse: 4 experts, 2 per token (Qwen3.5: and a shared one)
            text_config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden)
            shared = {"shared_expert_intermediate_size": hidden} if architecture == "qwen3_5_moe" else {}
            text_config.update(decoder_sparse_step=1, **shared)
        vision_config.update(patch_size=16, num_position_embeddings=64)
        if architecture.startswith("qwen3_5"):  # Gated DeltaNet (linear attention) layers, then one of full attention
            text_config.update(
                layer_types=["linear_attention"] * (layers - 1) + ["full_attention"],
                linear_key_head_dim=head_dim,
                linear_value_head_dim=head_dim,
                linear_num_key_heads=kv_heads,
                linear_num_value_heads=heads,
            )
        else:
            vision_config["deepstack_visual_indexes"] = list(range(min(vision_depth, layers)))
        prefix = {
            "qwen3_vl": "Qwen3VL",
            "qwen3_vl_moe": "Qwen3VLMoe",
            "qwen3_5": "Qwen3_5",
            "qwen3_5_moe": "Qwen3_5Moe",
        }[architecture]
        config: Any = getattr(transformers, f"{prefix}Config")(
            text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **token_ids
        )
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
        patch = 16
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision_config.update(fullatt_block_indexes=list(range(vision_depth)), window_size=112, patch_size=14)
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **token_ids, **special_ids)
        model = Qwen2_5_VLForConditionalGeneration(config)
        patch = 14
    model.save_pretrained(out)
    tok.save_pretrained(out)
    side = 2 * patch  # one merged token; 2x2 to 4x4 of them, as the Qwen2.5-VL processor below
    Qwen2VLImageProcessorPil(
        min_pixels=(2 * side) ** 2, max_pixels=(4 * side) ** 2, patch_size=patch, merge_size=2
    ).save_pretrained(out)
    return out


def build_random_llava(out_dir: str | Path, hidden: int = 64, image_size: int = 64, seed: int = 0) -> Path:
    """Save a random LlavaForConditionalGeneration (a CLIP vision tower, a Qwen2 text stack) with its processor, as
    the hub ships one: an `<image>` token the processor expands to a fixed 16 tokens per image, a chat template.
    A VLM outside the Qwen-VL families: score mode reads it, reason mode refuses it."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    corpus = [*DEFAULT_CORPUS, *["Please output True or False. True. False."] * 20]
    tok = train_byte_bpe_tokenizer(corpus, 400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"])
    tok.chat_template = QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
    ids = tok.convert_tokens_to_ids
    patch = image_size // 4
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=4096,
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            tie_word_embeddings=True,
        ),
        image_token_index=ids("<image>"),
        vision_feature_select_strategy="default",  # the patch tokens, CLS dropped
        vision_feature_layer=-1,
        image_seq_length=16,
    )
    LlavaForConditionalGeneration(config).save_pretrained(out)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=tok.chat_template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
    return out
