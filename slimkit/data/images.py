"""An image folder as a data set: one sub-folder per class, read with Pillow."""

from pathlib import Path

import torch

from slimkit.data.arrays import Dataset, Split
from slimkit.errors import SlimkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_folder(root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2):
    """A Dataset from one sub-folder per class (sorted names are labels 0..C-1), images resized to
    the first image's size, grayscale when every image is."""
    from PIL import Image

    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = [(f, i) for i, d in enumerate(classes) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise SlimkitError(f"{root} needs one sub-folder per class (at least 2) holding images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    with Image.open(files[0][0]) as first:
        size = first.size
    images = []
    for f, _ in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB").resize(size))
    gray = all(im.convert("L").convert("RGB").tobytes() == im.tobytes() for im in images)
    arrays = [torch.frombuffer(bytearray((im.convert("L") if gray else im).tobytes()), dtype=torch.uint8)
              for im in images]
    c = 1 if gray else 3
    x = torch.stack([a.reshape(size[1], size[0], c).permute(2, 0, 1) for a in arrays]).float() / 255
    y = torch.tensor([i for _, i in files])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(len(y) * test_fraction), int(len(y) * val_fraction)
    if len(y) - n_test - n_val < 1 or n_val < 1:
        raise SlimkitError(f"{root} holds {len(y)} images; give at least 10 so train, val and test each get some")
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return Dataset(root.name, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), len(classes))
