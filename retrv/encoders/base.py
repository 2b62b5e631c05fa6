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

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def preprocess(self, image: Image.Image) -> Any: ...

    def encode_pixels(self, batch: list[Any]) -> np.ndarray: ...

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...
