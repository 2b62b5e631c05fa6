"""Write the real sample photos that ship with scikit-image, scikit-learn and matplotlib to a folder.

python examples/sample_photos.py examples/photos
"""

from __future__ import annotations

import sys
from pathlib import Path

SAMPLES = {
    "coffee.jpg": ("skimage", "coffee"),
    "chelsea-the-cat.jpg": ("skimage", "chelsea"),
    "rocket.jpg": ("skimage", "rocket"),
    "astronaut.png": ("skimage", "astronaut"),
    "china-temple.jpg": ("sklearn", "china.jpg"),
    "flower.jpg": ("sklearn", "flower.jpg"),
    "grace_hopper.jpg": ("matplotlib", "grace_hopper.jpg"),
}


def load(library: str, name: str):
    from PIL import Image

    if library == "skimage":
        import skimage.data

        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if library == "sklearn":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name))
    import matplotlib.cbook

    return Image.open(matplotlib.cbook.get_sample_data(name)).convert("RGB")


def main(out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for file_name, (library, name) in SAMPLES.items():
        target = root / file_name
        if not target.exists():
            load(library, name).save(target)
    print(f"{len(SAMPLES)} photos in {root}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/photos")
