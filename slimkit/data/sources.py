"""Loaders for Fashion-MNIST (IDX files), scikit-learn digits and a user's .npz file."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from slimkit.data.arrays import Dataset, Split, split_train_val
from slimkit.errors import SlimkitError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# Per-channel statistics of the Fashion-MNIST training images, used to standardise inputs.
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530
_DIGITS_MEAN, _DIGITS_STD = 0.3056, 0.3760


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its stored dtype and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SlimkitError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SlimkitError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SlimkitError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise SlimkitError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install it with "
        f"'sudo apt-get install dataset-fashion-mnist' or pass --data-dir to a folder with the IDX files"
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Fashion-MNIST as standardised float tensors (N, 1, 28, 28); val is a seeded slice of train."""
    folder = Path(root) if root is not None else DEFAULT_FASHION_MNIST_DIR
    if not folder.is_dir():
        raise SlimkitError(
            f"Fashion-MNIST folder {folder} does not exist; install it with "
            f"'sudo apt-get install dataset-fashion-mnist' or pass --data-dir to a folder with the IDX files"
        )
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in _FASHION_FILES.items()}

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
        return Split((xt - _FASHION_MEAN) / _FASHION_STD, torch.from_numpy(y.astype(np.int64)))

    train, val = split_train_val(to_split(arrays["train_x"], arrays["train_y"]), val_fraction, seed)
    return Dataset("fashion-mnist", train, val, to_split(arrays["test_x"], arrays["test_y"]), num_classes=10)


def load_digits(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as standardised 1x8x8 images, with seeded splits."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1) - _DIGITS_MEAN) / _DIGITS_STD
    y = torch.from_numpy(bunch.target.astype(np.int64))
    rest, test = split_train_val(Split(x, y), test_fraction, seed)
    train, val = split_train_val(rest, val_fraction / (1.0 - test_fraction), seed + 1)
    return Dataset("digits", train, val, test, num_classes=10)


def load_npz(path: str | os.PathLike, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A user's .npz with arrays `x` (N, C, H, W) or (N, H, W) and integer labels `y` (N,).

    If the file also holds `x_test`/`y_test`, those form the test split; otherwise a seeded slice does.
    """
    p = Path(path)
    if not p.is_file():
        raise SlimkitError(f"data file {p} does not exist; pass a .npz with arrays 'x' and 'y'")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"cannot read {p} as .npz without pickle: {exc}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise SlimkitError(f"{p} has no array {key!r} (found {sorted(arrays)}); save it with np.savez(path, x=..., y=...)")

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise SlimkitError(f"{p}: x must have shape (N, C, H, W) or (N, H, W), got {x.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise SlimkitError(f"{p}: y must hold integer class labels, got dtype {y.dtype}")
        return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)).reshape(-1))

    full = to_split(arrays["x"], arrays["y"])
    if "x_test" in arrays and "y_test" in arrays:
        test, rest = to_split(arrays["x_test"], arrays["y_test"]), full
    else:
        rest, test = split_train_val(full, test_fraction, seed)
    train, val = split_train_val(rest, val_fraction, seed + 1)
    num_classes = int(max(full.y.max().item(), test.y.max().item())) + 1
    return Dataset(p.stem, train, val, test, num_classes=num_classes)


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """Load by name: 'fashion-mnist', 'digits', or a path to a .npz file."""
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(data_dir, val_fraction=val_fraction, seed=seed)
    if name == "digits":
        return load_digits(val_fraction=val_fraction, seed=seed)
    if name.endswith(".npz"):
        return load_npz(name, val_fraction=val_fraction, seed=seed)
    raise SlimkitError(f"unknown dataset {name!r}; use 'fashion-mnist', 'digits' or a path to a .npz file")
