"""Reasoner checkpoints: resolve a spec, load the VLM (+ LoRA, + ICM), save, and name them by content.

A spec is a local directory or a Hugging Face id with an optional `@revision`. A directory is either
a plain model directory (config.json + safetensors + tokenizer + image processor) or a retrv
reasoner checkpoint, recognised by `retrv-reasoner.json`:

    retrv-reasoner.json         ReasonerConfig (base model spec, ICM config, special tokens, stage, ...)
    icm.safetensors             ICM weights (retrv.icm.module.ICM)
    model.safetensors + config.json                 weights == "full"
    adapter_config.json + adapter_model.safetensors weights == "lora" (merged into the base on load)
    token_embeddings.safetensors  embedding rows of the added special tokens (weights "base" / "lora")
    tokenizer files, preprocessor_config.json

The checkpoint id (`reasoner_id`) hashes the config, every weight file, the tokenizer, the image
processor and the image token budget, so the index side table `icm_<id>` of a changed reasoner is a
different table and stale ICM tokens are never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.config import DEFAULT_REASONER
from retrv.errors import ModelLoadError, ModelNotCachedError, UsageError
from retrv.hub import model_dir, parse_model_ref, quiet_transformers
from retrv.rerank.processor import (  # noqa: F401  (constants re-exported as part of this module's API)
    DEFAULT_MAX_IMAGE_TOKENS,
    PIXELS_PER_IMAGE_TOKEN,
    build_processor,
    cap_image_tokens,
    ensure_special_tokens,
    image_pixel_budget,
    read_chat_template,
    restore_role_token_rows,
    role_token_rows,
)

if TYPE_CHECKING:
    from retrv.icm.module import ICM

REASONER_CONFIG = "retrv-reasoner.json"
ICM_WEIGHTS = "icm.safetensors"
TOKEN_EMBEDDINGS = "token_embeddings.safetensors"
STAGES = ("base", "icm", "sft", "grpo")
WEIGHT_SOURCES = ("base", "full", "lora")
DEFAULT_SPECIAL_TOKENS = {
    "icm": "<|icm|>",
    "inspect_start": "<inspection-index-start>",
    "inspect_end": "<inspection-index-end>",
    "answer_start": "<answer>",
    "answer_end": "</answer>",
}


@dataclass
class ReasonerConfig:
    """What `retrv-reasoner.json` holds."""

    base_model: str
    icm: dict[str, Any] | None = None  # retrv.icm.module.ICMConfig fields; None for a bare base model
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPECIAL_TOKENS))
    prompt_version: int = 1
    prompt_style: str = "chat"  # rerank.sequence.PROMPT_STYLES: "chat" (instructed) or "bare" (trained from scratch)
    stage: str = "base"  # base | icm | sft | grpo
    weights: str = "base"  # base | full | lora: where the LLM weights come from
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> ReasonerConfig:
        path = directory / REASONER_CONFIG
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(cls)}
            cfg = cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{path}: not a valid reasoner config ({exc})") from None
        if cfg.stage not in STAGES or cfg.weights not in WEIGHT_SOURCES:
            raise ModelLoadError(f"{path}: stage must be one of {STAGES} and weights one of {WEIGHT_SOURCES}")
        from retrv.rerank.sequence import PROMPT_STYLES

        if cfg.prompt_style not in PROMPT_STYLES:
            raise ModelLoadError(f"{path}: prompt_style must be one of {PROMPT_STYLES}, got {cfg.prompt_style!r}")
        cfg.special_tokens = {**DEFAULT_SPECIAL_TOKENS, **cfg.special_tokens}
        return cfg

    def write(self, directory: Path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
        (directory / REASONER_CONFIG).write_text(text + "\n", encoding="utf-8")


@dataclass
class LoadedReasoner:
    model: Any  # a transformers *ForConditionalGeneration, eval mode, on `device`
    tokenizer: Any
    image_processor: Any
    processor: Any  # the model's multimodal processor (None if transformers has none for this model type)
    config: ReasonerConfig
    icm: ICM | None
    checkpoint_id: str
    device: str
    dtype: Any
    source_dir: Path | None = None  # the resolved directory of the spec
    device_reason: str = ""

    def token_id(self, role: str) -> int:
        """The id of a special token by role: icm, inspect_start, inspect_end, answer_start, answer_end."""
        return int(self.tokenizer.convert_tokens_to_ids(self.config.special_tokens[role]))


# ---------------------------------------------------------------- resolving a spec to a directory


def resolve_spec(spec: str) -> Path:
    """A local directory for `spec` (a directory, or a hub id whose snapshot is cached or downloaded)."""
    spec = (spec or DEFAULT_REASONER).strip()
    try:
        return model_dir(parse_model_ref(spec), markers=(REASONER_CONFIG, "config.json"))
    except UsageError as e:
        raise ModelLoadError(f"reasoner {spec!r}: {e}") from None
    except ModelLoadError as e:
        raise type(e)(f"reasoner {spec!r}: {e}", *([e.why] if isinstance(e, ModelNotCachedError) else [])) from None


def _pinned_spec(spec: str, directory: Path) -> str:
    """The spec to record as `base_model`: absolute for directories, `id@commit` for hub snapshots."""
    ref = parse_model_ref(spec)
    if ref.local:
        return ref.target
    commit = directory.name
    return f"{ref.target}@{commit}" if re.fullmatch(r"[0-9a-f]{40}", commit) else spec


# ---------------------------------------------------------------- content hash


_digest_cache: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file; hub cache blobs are named by their sha256 already, so those are free."""
    if path.is_symlink():
        blob = Path(os.readlink(path)).name
        if re.fullmatch(r"[0-9a-f]{64}", blob):
            return blob
    real = path.resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


_HASHED_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json", "adapter_config.json")


def reasoner_id(
    directory: str | Path, *, base_dir: str | Path | None = None, extra: dict[str, Any] | None = None
) -> str:
    """A short stable hash (12 hex) of a reasoner's content: config, weights, tokenizer, image processor.

    For checkpoints whose LLM weights live in the base model (`weights` base or lora), the base's own id
    is part of the hash; pass `base_dir` when it is already resolved. `extra` adds load options that
    change what the model computes (the image token budget).
    """
    root = Path(directory)
    h = hashlib.sha256(b"retrv-reasoner-id/1\n")
    cfg_path = root / REASONER_CONFIG
    if cfg_path.is_file():
        cfg = ReasonerConfig.read(root)
        h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
        if cfg.weights != "full":
            base = Path(base_dir) if base_dir is not None else resolve_spec(cfg.base_model)
            h.update(b"base:" + reasoner_id(base).encode())
    for path in sorted(root.iterdir()):
        if path.suffix == ".safetensors" or path.name in _HASHED_FILES:
            h.update(f"{path.name}:{_file_digest(path)}\n".encode())
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- load


def _has_safetensors(directory: Path, name: str = "model") -> bool:
    return any(directory.glob(f"{name}*.safetensors"))


def _model_type(directory: Path) -> str:
    try:
        return str(json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type", "unknown"))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def load_reasoner(
    spec: str | None = None,
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    require_icm: bool = False,
    max_image_tokens: int | None = DEFAULT_MAX_IMAGE_TOKENS,
    role_tokens: bool | None = None,
) -> LoadedReasoner:
    """Load a reasoner by spec (see the module docstring); raise ModelLoadError with one line on failure.

    CUDA runs bfloat16 with SDPA attention; the CPU runs float32. `require_icm` (reason mode with ICM tokens)
    refuses a bare base model, which has no ICM weights. `role_tokens` adds retrv's role tokens (`<|icm|>`, the
    tags) to the tokenizer and the embeddings, as training needs; by default only a retrv checkpoint has them:
    a plain instruct model writes the tags as text, with the tokens it knows.
    """
    from retrv.devices import resolve_device

    spec = spec or DEFAULT_REASONER
    root = resolve_spec(spec)
    is_checkpoint = (root / REASONER_CONFIG).is_file()
    if is_checkpoint:
        config = ReasonerConfig.read(root)
    else:
        config = ReasonerConfig(base_model=_pinned_spec(spec, root))
    if require_icm and (config.icm is None or not (root / ICM_WEIGHTS).is_file()):
        what = f"stage {config.stage}" if is_checkpoint else "a plain model, not a retrv checkpoint"
        raise ModelLoadError(
            f"reasoner {spec!r} has no ICM weights ({what}); "
            "ICM tokens need a checkpoint from `retrv train`. With a Qwen-VL-family instruct VLM use "
            "--candidate-tokens glance (reason mode) or --rerank score",
            setting="candidate_tokens",
        )
    llm_dir = root if (not is_checkpoint or config.weights == "full") else resolve_spec(config.base_model)
    if not _has_safetensors(llm_dir):
        raise ModelLoadError(
            f"reasoner {spec!r}: no model*.safetensors in {llm_dir} (retrv loads safetensors weights only)"
        )
    try:
        choice = resolve_device(device, half=True)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None

    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from retrv.rerank.patch_embedding import linear_patch_embeddings

    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root), trust_remote_code=trust_remote_code)
            try:
                image_processor = AutoImageProcessor.from_pretrained(str(root), trust_remote_code=trust_remote_code)
            except (OSError, ValueError):
                image_processor = None
            model = AutoModelForImageTextToText.from_pretrained(
                str(llm_dir),
                dtype=choice.dtype,
                attn_implementation="sdpa",
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "Unrecognized configuration class" in first:  # a model, but not one that reads images and writes text
                kind = _model_type(llm_dir)
                raise ModelLoadError(
                    f"reasoner {spec!r} is a {kind!r} model, not a vision-language model that writes text "
                    "(transformers' AutoModelForImageTextToText); an image-text embedding model goes in --encoder"
                ) from None
            raise ModelLoadError(f"reasoner {spec!r}: cannot load from {llm_dir} ({first})") from None

        if role_tokens or (role_tokens is None and is_checkpoint):
            ensure_special_tokens(model, tokenizer, config.special_tokens)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = read_chat_template(root) or read_chat_template(llm_dir)
        if is_checkpoint and config.weights != "full" and (root / TOKEN_EMBEDDINGS).is_file():
            restore_role_token_rows(model, root / TOKEN_EMBEDDINGS)
        if is_checkpoint and config.weights == "lora":
            from peft import PeftModel

            if not (root / "adapter_model.safetensors").is_file():
                raise ModelLoadError(
                    f"reasoner {spec!r}: no adapter_model.safetensors in {root} (retrv loads safetensors weights only)"
                )
            model = PeftModel.from_pretrained(model, str(root)).merge_and_unload()

        linear_patch_embeddings(model)
        cap_image_tokens(image_processor, max_image_tokens)
        processor = build_processor(model.config.model_type, image_processor, tokenizer, root, trust_remote_code)
        if image_processor is None and processor is not None:
            image_processor = processor.image_processor
    model.to(choice.device).eval()  # type: ignore[arg-type]  # transformers' stubs type `to` oddly
    if _has_linear_attention(model):  # `reference_kernels_note` says it once, where transformers warns per kernel
        import logging

        logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)

    icm = None
    if config.icm is not None and (root / ICM_WEIGHTS).is_file():
        icm = load_icm(root / ICM_WEIGHTS, config.icm, device=choice.device, dtype=choice.dtype)

    checkpoint_id = reasoner_id(root, base_dir=llm_dir, extra=image_pixel_budget(image_processor))
    return LoadedReasoner(
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        processor=processor,
        config=config,
        icm=icm,
        checkpoint_id=checkpoint_id,
        device=choice.device,
        dtype=choice.dtype,
        source_dir=root,
        device_reason=choice.reason,
    )


def reference_kernels_note(loaded: LoadedReasoner) -> str | None:
    """What to tell the user when the model's linear-attention layers (Qwen3.5's Gated DeltaNet) run on
    transformers' reference PyTorch code; None for a model without them or with their CUDA kernels at hand
    (`load_reasoner` silences transformers' own warning, one per kernel, in favour of this one line)."""
    import importlib.util

    if not _has_linear_attention(loaded.model):
        return None
    missing = [name for name in ("fla", "causal_conv1d") if importlib.util.find_spec(name) is None]
    if loaded.device.startswith("cuda") and not missing:
        return None
    why = "on the CPU" if not loaded.device.startswith("cuda") else f"without {', '.join(missing)}"
    return f"its linear-attention layers run transformers' reference PyTorch code {why}: correct, but slower"


def _has_linear_attention(model: Any) -> bool:
    return "linear_attention" in (getattr(model.config.get_text_config(), "layer_types", None) or [])


def load_icm(path: Path, icm_config: dict[str, Any], *, device: str = "cpu", dtype: Any = None) -> ICM:
    from safetensors.torch import load_file

    from retrv.icm.module import ICM, ICMConfig

    try:
        icm = ICM(ICMConfig(**icm_config))
        icm.load_state_dict(load_file(str(path)))
    except (TypeError, RuntimeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: ICM weights do not match the config in {REASONER_CONFIG} ({first})") from None
    return icm.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------- save


def save_reasoner(
    loaded_or_parts: LoadedReasoner,
    out_dir: str | Path,
    *,
    stage: str,
    training: dict[str, Any] | None = None,
    icm: ICM | None = None,
    lora_model: Any = None,
    weights: str | None = None,
) -> Path:
    """Write a reasoner checkpoint directory; return it.

    `weights` defaults to "lora" when `lora_model` (a peft model) is given, "base" for stages base/icm
    (the LLM is frozen: only ICM weights and the new token rows are written) and "full" otherwise.
    `icm` defaults to the loaded ICM.
    """
    from safetensors.torch import save_file

    loaded = loaded_or_parts
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    weights = weights or ("lora" if lora_model is not None else "base" if stage in ("base", "icm") else "full")
    if weights not in WEIGHT_SOURCES:
        raise ValueError(f"weights must be one of {WEIGHT_SOURCES}, got {weights!r}")
    if weights == "lora" and lora_model is None:
        raise ValueError("weights='lora' needs the peft model (lora_model=...)")
    icm = icm if icm is not None else loaded.icm
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_model = _llm_base_for(loaded, weights, out)  # checked before anything is deleted
    for name in (ICM_WEIGHTS, TOKEN_EMBEDDINGS, "adapter_model.safetensors", "adapter_config.json"):
        (out / name).unlink(missing_ok=True)
    for stale in out.glob("model*.safetensors"):
        stale.unlink()

    config = dataclasses.replace(
        loaded.config,
        stage=stage,
        weights=weights,
        training=dict(training or {}),
        icm=dataclasses.asdict(icm.config) if icm is not None else None,
        base_model=base_model,
    )
    with quiet_transformers():
        if weights == "full":
            loaded.model.save_pretrained(str(out))
        else:
            if weights == "lora":
                lora_model.save_pretrained(str(out))
            save_file(
                role_token_rows(loaded.model, loaded.tokenizer, config.special_tokens), str(out / TOKEN_EMBEDDINGS)
            )
        loaded.tokenizer.save_pretrained(str(out))
        if loaded.image_processor is not None:
            loaded.image_processor.save_pretrained(str(out))
    if icm is not None:
        state = {k: v.detach().float().cpu().contiguous() for k, v in icm.state_dict().items()}
        save_file(state, str(out / ICM_WEIGHTS))
    config.write(out)
    return out


def _llm_base_for(loaded: LoadedReasoner, weights: str, out: Path) -> str:
    """Where a checkpoint that does not hold full LLM weights finds them.

    A fine-tuned full checkpoint becomes the base of what is saved on top of it; the LLM of a merged LoRA
    checkpoint exists only in memory, so it has to be saved with full weights.
    """
    if weights == "full":
        return loaded.config.base_model
    src = loaded.source_dir
    if src is None or not (src / REASONER_CONFIG).is_file() or loaded.config.weights == "base":
        return loaded.config.base_model
    if loaded.config.weights == "lora":
        raise ValueError(f"the LLM of {src} is a merged LoRA; save on top of it with weights='full'")
    if out.resolve() == src.resolve():
        raise ValueError(f"{src} holds the full LLM weights this checkpoint would rely on; save into another directory")
    return str(src)
