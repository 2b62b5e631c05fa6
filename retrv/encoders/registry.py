"""Encoder spec strings (`--encoder SPEC`) and the one loader that turns them into encoders.

Accepted forms:
    auto                        CLIP when it can be loaded (cache or download), else `lite` (with a notice)
    lite                        EfficientNet-Lite0 x MiniLM, offline, no download
    clip[:<hf-id>[@rev]|:<dir>] a CLIP or SigLIP model (default openai/clip-vit-base-patch32)
    text[:<hf-id>[@rev]|:<dir>] a sentence-embedding model for text-only corpora (default all-MiniLM-L6-v2)

A parsed spec prints as its canonical string (`clip:openai/clip-vit-base-patch32`,
`clip:/abs/dir`, `text:...`, `lite`): that string, never `auto`, is what an index records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.encoders.clip import DEFAULT_CLIP_MODEL
from retrv.encoders.text import DEFAULT_TEXT_MODEL
from retrv.errors import ModelLoadError, ModelNotCachedError, UsageError
from retrv.hub import ModelRef, parse_model_ref

if TYPE_CHECKING:
    from retrv.encoders.base import Encoder

ACCEPTED_FORMS = "auto, lite, clip, clip:<hf-id>[@revision], clip:<dir>, text, text:<hf-id>[@revision], text:<dir>"
DEFAULT_TARGETS = {"clip": DEFAULT_CLIP_MODEL, "text": DEFAULT_TEXT_MODEL}
CLIP_HINT = "To use CLIP: run once with network, or pass --encoder clip:/path/to/clip"


@dataclass(frozen=True)
class EncoderSpec:
    kind: str  # "auto" | "lite" | "clip" | "text"
    target: str | None = None  # HF id or absolute directory; None for auto and lite
    revision: str | None = None  # only with an HF id

    @property
    def ref(self) -> ModelRef:
        assert self.target is not None, f"{self.kind} names no model"
        return ModelRef(self.target, self.revision, local=Path(self.target).is_absolute())

    def __str__(self) -> str:
        if self.target is None:
            return self.kind
        return f"{self.kind}:{self.target}" + (f"@{self.revision}" if self.revision else "")


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """Parse SPEC into (kind, target, revision); UsageError with the accepted forms when it is not one."""

    def bad(why: str) -> UsageError:
        return UsageError(f"bad encoder spec {spec!r}: {why}; expected one of: {ACCEPTED_FORMS}")

    text = (spec or "").strip()
    kind, colon, rest = text.partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if kind in ("auto", "lite"):
        if colon:
            raise bad(f"{kind!r} takes no argument")
        return EncoderSpec(kind)
    if kind not in DEFAULT_TARGETS:
        raise bad(f"unknown encoder kind {kind!r}" if kind else "empty")
    if not rest:
        if colon:
            raise bad("nothing after ':'")
        return EncoderSpec(kind, DEFAULT_TARGETS[kind])
    try:
        ref = parse_model_ref(rest)
    except UsageError as e:
        raise bad(str(e)) from None
    return EncoderSpec(kind, ref.target, ref.revision)


def canonical_spec(spec: str) -> str:
    """The string an index records for SPEC (`auto` stays `auto`: resolve it by loading)."""
    return str(parse_encoder_spec(spec))


def load_encoder(
    spec: str = "auto", device: str = "auto", notify: Callable[[str], None] | None = None, *, half: bool = True
) -> Encoder:
    """Load the encoder SPEC names. `auto` tries CLIP and falls back to `lite`, saying why through `notify`.

    `half` runs CLIP/SigLIP and text models in bf16/fp16 on CUDA; other devices always run float32.
    Raises RetrvError for a bad spec and ModelLoadError when the named model cannot be loaded.
    """
    parsed = parse_encoder_spec(spec)
    if parsed.kind == "auto":
        return _load_auto(device, notify, half=half)
    if parsed.kind == "lite":
        from retrv.encoders.lite import load_lite_encoder

        return load_lite_encoder(device)
    if parsed.kind == "clip":
        from retrv.encoders.clip import load_clip_encoder

        return load_clip_encoder(parsed.ref, spec=str(parsed), device=device, half=half)
    from retrv.encoders.text import load_text_encoder

    return load_text_encoder(parsed.ref, spec=str(parsed), device=device, half=half)


def _load_auto(device: str, notify: Callable[[str], None] | None, *, half: bool) -> Encoder:
    from retrv.encoders.clip import load_clip_encoder
    from retrv.encoders.lite import load_lite_encoder

    try:
        return load_clip_encoder(
            ModelRef(DEFAULT_CLIP_MODEL), spec=f"clip:{DEFAULT_CLIP_MODEL}", device=device, half=half
        )
    except ModelNotCachedError as exc:
        why = f"CLIP not in the Hugging Face cache and {exc.why}"
    except ModelLoadError as exc:
        why = f"CLIP could not be loaded ({exc})"
    if notify is not None:
        notify(f"{why}; using the offline `lite` encoder. {CLIP_HINT}")
    return load_lite_encoder(device)
