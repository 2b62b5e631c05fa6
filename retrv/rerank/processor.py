"""The reasoner's processor and special tokens: building the Qwen-VL processor without torchvision,
capping image tokens, and adding retrv's role tokens (`<|icm|>`, inspection and answer tags)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retrv.icm.features import PIXELS_PER_IMAGE_TOKEN, pixels_per_image_token  # noqa: F401 (re-exported)

# Candidates are capped at 256 image tokens (about 448x448 px; 512x512 for Qwen3-VL) unless the caller asks
# otherwise: the hub default (1280 tokens) would make a top-50 rerank 64k image tokens long. A processor that
# already asks for fewer pixels is kept as is.
DEFAULT_MAX_IMAGE_TOKENS = 256


def _processor_class(model_type: str) -> type | None:
    """The model's processor class, patched to accept `video_processor=None`.

    transformers 5.23 checks every processor argument's class, and without torchvision the video
    processor mapping is broken, so even `None` fails the check.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    classes: dict[str, type] = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}
    try:
        from transformers import Qwen3VLProcessor

        for family in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):  # Qwen3.5 reuses Qwen3-VL's
            classes[family] = Qwen3VLProcessor
    except ImportError:
        pass
    base: Any = classes.get(model_type)
    if base is None:
        return None

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None:
            return None
        return base.check_argument_for_proper_class(self, argument_name, argument)

    return type(f"Retrv{base.__name__}", (base,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def read_chat_template(directory: Path) -> str | None:
    """A processor-level chat template (`chat_template.jinja` or `chat_template.json`), as hub VLMs ship it."""
    jinja, js = directory / "chat_template.jinja", directory / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if js.is_file():
        try:
            template = json.loads(js.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            return None
        return template if isinstance(template, str) else None
    return None


def build_processor(
    model_type: str,
    image_processor: Any,
    tokenizer: Any,
    directory: Path | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The model's processor: the Qwen-VL families' built here from their parts (their own cannot load without
    torchvision), any other model's as it saved it in `directory` (`AutoProcessor`); None when there is none."""
    cls = _processor_class(model_type)
    if cls is None:
        return _saved_processor(directory, trust_remote_code) if directory is not None else None
    if image_processor is None:
        return None
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=getattr(tokenizer, "chat_template", None),
    )


def _saved_processor(directory: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
        return None
    # a tokenizer alone is no processor: score mode then reads text candidates only
    return processor if getattr(processor, "image_processor", None) is not None else None


def cap_image_tokens(image_processor: Any, max_image_tokens: int | None) -> None:
    """Lower the processor's max pixels to `max_image_tokens` merged tokens (never raises it)."""
    size = getattr(image_processor, "size", None)
    if size is None or max_image_tokens is None:
        return
    budget = int(max_image_tokens) * pixels_per_image_token(image_processor)
    longest = size.get("longest_edge", None)
    if longest and longest > budget:
        new = dict(size.items()) if hasattr(size, "items") else {"shortest_edge": size["shortest_edge"]}
        new = {k: v for k, v in new.items() if v is not None}
        new["longest_edge"] = budget
        new["shortest_edge"] = min(new.get("shortest_edge", budget), budget)
        image_processor.size = type(size)(**new) if not isinstance(size, dict) else new


def image_pixel_budget(image_processor: Any) -> dict[str, int | None]:
    size = getattr(image_processor, "size", None)
    if size is None:
        return {}
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return {"min_pixels": get("shortest_edge"), "max_pixels": get("longest_edge")}


def ensure_special_tokens(model: Any, tokenizer: Any, special_tokens: dict[str, str]) -> list[str]:
    """Add the missing role tokens to the tokenizer (as special tokens) and grow the embeddings to fit.

    New rows start at the mean of the existing embeddings (deterministic; transformers' own mean
    resizing samples noise, which would make two loads of the same checkpoint differ). Rows are only
    added when the tokenizer outgrows the matrix (hub Qwen models have spare rows already); this also
    covers a checkpoint tokenizer that already holds the tokens on top of a smaller base. Returns the
    tokens that were added to the tokenizer.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in special_tokens.values() if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if len(tokenizer) > old:
        import torch

        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            inp = model.get_input_embeddings().weight
            inp[old:] = inp[:old].mean(0, keepdim=True)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != inp.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0, keepdim=True)
    return missing


def role_token_rows(model: Any, tokenizer: Any, special_tokens: dict[str, str]) -> dict[str, Any]:
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in special_tokens.values()]
    import torch

    index = torch.tensor(ids, dtype=torch.long)
    rows = {"ids": index, "input": model.get_input_embeddings().weight.detach()[index].float().cpu().contiguous()}
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["output"] = out.weight.detach()[index].float().cpu().contiguous()
    return rows


def restore_role_token_rows(model: Any, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    rows = load_file(str(path))
    index = rows["ids"].long()
    with torch.no_grad():
        inp = model.get_input_embeddings().weight
        inp[index] = rows["input"].to(inp.dtype)
        out = model.get_output_embeddings()
        if "output" in rows and out is not None:
            out.weight[index] = rows["output"].to(out.weight.dtype)
