"""`clip:<hf-id-or-dir>`: a transformers CLIPModel or SiglipModel as a dual encoder.

The architecture is read from the config's `model_type` (AutoConfig / AutoModel), so one spec
form serves both families. What differs between them is handled here:
- text length: CLIP's 77 positions, SigLIP's 64; longer text is truncated, never an error;
- padding: CLIP pads to the longest text and pools at the end token; SigLIP was trained on
  texts padded to `max_length` without an attention mask and pools the last position, so it gets
  exactly that;
- transformers 5 returns an output object from `get_*_features` (the vector is `.pooler_output`),
  transformers 4 a tensor; both are accepted.

Weights load from safetensors only, with `trust_remote_code=False`; half precision on CUDA only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrv.encoders.base import encoder_device, l2_normalize
from retrv.errors import ModelLoadError
from retrv.hub import ModelRef, load_failure, model_dir, quiet_transformers

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
SUPPORTED_MODEL_TYPES = ("clip", "siglip")


def _vectors(output: Any) -> Any:
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder:
    """Texts and images into CLIP's (or SigLIP's) shared space, rows L2-normalised, float32."""

    modalities = frozenset({"text", "image"})

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, *, spec: str, device: str, batch_size: int = 64
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        config = model.config
        self.model_type = config.model_type
        self.max_length = int(config.text_config.max_position_embeddings)
        self.dtype = next(model.parameters()).dtype
        if self.model_type == "siglip":
            self.dim = int(model.text_model.head.out_features)
        else:
            self.dim = int(model.text_projection.out_features)

    def _tokenize(self, texts: list[str]) -> dict:
        siglip = self.model_type == "siglip"
        batch = self.tokenizer(
            texts,
            padding="max_length" if siglip else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        keys = ("input_ids",) if siglip else ("input_ids", "attention_mask")
        return {key: batch[key].to(self.device) for key in keys}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                features = self.model.get_text_features(**self._tokenize(texts[start : start + self.batch_size]))
                chunks.append(_vectors(features).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(chunks))

    def preprocess(self, image: Image.Image) -> Any:
        """Resize, crop and normalise as the model's image processor says; CPU, safe on loader threads."""
        pixels = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        return pixels[0]

    def encode_pixels(self, batch: list[Any]) -> np.ndarray:
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                pixels = torch.stack(batch[start : start + self.batch_size]).to(self.device, self.dtype)
                chunks.append(_vectors(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(chunks))

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels([self.preprocess(image) for image in images])


def _image_processor_kwargs() -> dict:
    """Without torchvision, ask for the PIL image processor by name (transformers 5 warns when it falls back)."""
    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available() or int(transformers.__version__.split(".")[0]) < 5:
        return {}
    return {"backend": "pil"}


def load_clip_encoder(
    ref: ModelRef, *, spec: str | None = None, device: str = "auto", half: bool = True
) -> ClipEncoder:
    """Load a CLIP or SigLIP model from an HF id or a directory; ModelLoadError if it cannot be."""
    path = model_dir(ref, instead="--encoder clip:/path/to/model")  # first: a bad target fails before torch loads
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    device, dtype_name = encoder_device(device, half=half)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
            if config.model_type not in SUPPORTED_MODEL_TYPES:
                raise ModelLoadError(
                    f"{path} is a {config.model_type!r} model; clip: expects a CLIP or SigLIP model "
                    f"(model_type {' or '.join(SUPPORTED_MODEL_TYPES)})"
                )
            model = AutoModel.from_pretrained(
                path, config=config, use_safetensors=True, trust_remote_code=False, dtype=getattr(torch, dtype_name)
            )
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = AutoImageProcessor.from_pretrained(path, **_image_processor_kwargs())
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure to load is the user's model, not a retrv bug
        raise load_failure(path, exc) from None
    model.to(device).eval()
    return ClipEncoder(model, tokenizer, image_processor, spec=spec or f"clip:{ref}", device=device)
