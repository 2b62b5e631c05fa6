"""The stage-1 encoder protocol: texts and images into one L2-normalised vector space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@runtime_checkable
class Encoder(Protocol):
    """What the index and the engine need from an embedding model.

    Every method returns float32 arrays of shape (n, dim), each row L2-normalised.
    Image work is split in two so that decoding and preprocessing (`preprocess`, called on
    loader threads, CPU only, thread-safe) overlap the model (`encode_pixels`, main thread).
    """

    spec: str  # canonical spec string recorded in the index, e.g. "clip:openai/clip-vit-base-patch32"
    dim: int
    modalities: frozenset[str]  # subset of {"text", "image"} this encoder can embed
    device: str  # where the model runs, e.g. "cpu" or "cuda"

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def preprocess(self, image: Image.Image) -> Any: ...

    def encode_pixels(self, batch: list[Any]) -> np.ndarray: ...

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (a zero row stays zero)."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def combine(image_vecs: np.ndarray, text_vecs: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """One vector for an image+text item or query: the normalised weighted sum of its two embeddings.

    This is UniIR's score fusion (CLIP-SF / BLIP-SF): with unit vectors, the dot product of a fused
    query with a candidate is (up to one positive factor) `w·cos(image, c) + (1-w)·cos(text, c)`,
    so either half of a composed query ("this photo" + "but at night") pulls on the ranking.
    Inputs are (n, dim) or (dim,), rows L2-normalised; the output has the same shape, normalised.
    """
    import numpy as np

    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    image_vecs = np.asarray(image_vecs, dtype=np.float32)
    text_vecs = np.asarray(text_vecs, dtype=np.float32)
    if image_vecs.shape != text_vecs.shape:
        raise ValueError(f"image and text vectors differ in shape: {image_vecs.shape} vs {text_vecs.shape}")
    return l2_normalize(image_weight * image_vecs + (1.0 - image_weight) * text_vecs)


def encoder_device(requested: str = "auto", *, half: bool = True) -> tuple[str, str]:
    """(device, dtype name) for an encoder: `resolve_device`, with half precision kept to CUDA.

    On MPS and the CPU encoders run float32; vectors come back as float32 everywhere.
    """
    from retrv.devices import resolve_device

    choice = resolve_device(requested, half=half)
    dtype = choice.dtype_name if choice.device.startswith("cuda") else "float32"
    return choice.device, dtype
