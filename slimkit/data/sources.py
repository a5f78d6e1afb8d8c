"""Loaders for Fashion-MNIST (IDX files), scikit-learn digits and a user's .npz file."""

import gzip
import os
import struct
import zipfile
import zlib
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
# Labels of a user's data set must lie in [0, MAX_CLASSES): a stray huge label would otherwise size
# the classifier (and its memory) by that number.
MAX_CLASSES = 65536


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
    if len(data) < 4 + 4 * ndim:
        raise SlimkitError(f"{path} is truncated: its header declares {ndim} dimensions but the file ends first")
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
    for key, ndim in (("train_x", 3), ("train_y", 1), ("test_x", 3), ("test_y", 1)):
        if arrays[key].ndim != ndim:
            raise SlimkitError(f"{_FASHION_FILES[key]} in {folder} has shape {arrays[key].shape}, expected {ndim} "
                               f"dimensions; reinstall dataset-fashion-mnist or fix --data-dir")
        if ndim == 1 and arrays[key].size and arrays[key].max() > 9:
            raise SlimkitError(f"{_FASHION_FILES[key]} in {folder} holds label {arrays[key].max()}; Fashion-MNIST "
                               f"labels are 0..9")

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
    Every array is checked here, so a bad file fails before any model is built or trained.
    """
    p = Path(path)
    if p.is_dir():
        raise SlimkitError(f"data path {p} is a folder; pass a .npz file with arrays 'x' and 'y'")
    if not p.is_file():
        raise SlimkitError(f"data file {p} does not exist; pass a .npz with arrays 'x' and 'y'")
    arrays = _read_npz(p)
    for key in ("x", "y"):
        if key not in arrays:
            raise SlimkitError(f"{p} has no array {key!r} (found {sorted(arrays)}); save it with np.savez(path, x=..., y=...)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise SlimkitError(f"{p} has only one of x_test and y_test; save both, or neither to split the test set off x")

    full = _npz_split(p, arrays["x"], arrays["y"], "x", "y")
    if "x_test" in arrays:
        test, rest = _npz_split(p, arrays["x_test"], arrays["y_test"], "x_test", "y_test"), full
        if test.x.shape[1:] != full.x.shape[1:]:
            raise SlimkitError(f"{p}: x_test samples have shape {tuple(test.x.shape[1:])} but x samples "
                               f"{tuple(full.x.shape[1:])}; they must match")
    else:
        rest, test = split_train_val(full, test_fraction, seed)
    train, val = split_train_val(rest, val_fraction, seed + 1)
    if len(train) == 0 or len(test) == 0:
        raise SlimkitError(f"{p} has too few samples ({len(full)}) for a train and a test split; add samples")
    num_classes = int(max(full.y.max().item(), test.y.max().item())) + 1
    return Dataset(p.stem, train, val, test, num_classes=num_classes)


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz, read without pickle; any malformed file becomes one SlimkitError."""
    if p.stat().st_size == 0:
        raise SlimkitError(f"data file {p} is empty; save it with np.savez(path, x=..., y=...)")
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise SlimkitError(f"{p} holds a single array (.npy), not a .npz archive; save it with "
                               f"np.savez(path, x=..., y=...)")
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except SlimkitError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise SlimkitError(f"cannot read {p} as .npz without pickle ({type(exc).__name__}: {exc}); "
                           f"save it with np.savez(path, x=..., y=...) using numeric arrays") from None


def _npz_split(p: Path, x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> Split:
    """Check one pair of arrays and turn it into a float32 NCHW Split."""
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise SlimkitError(f"{p}: {x_name} must hold real numbers, got dtype {x.dtype}; convert it with "
                           f"x.astype('float32')")
    if y.ndim != 1:
        raise SlimkitError(f"{p}: {y_name} must be 1-D class labels of shape (N,), got {y.shape}; "
                           f"save {y_name}.reshape(-1) (or argmax of one-hot labels)")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise SlimkitError(f"{p}: {y_name} must hold integer class labels, got dtype {y.dtype}; "
                           f"save {y_name}.astype('int64')")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise SlimkitError(f"{p}: {x_name} must have shape (N, C, H, W) or (N, H, W), got {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise SlimkitError(f"{p}: {x_name} has {x.shape[0]} samples but {y_name} has {y.shape[0]}; they must match")
    if x.shape[0] == 0:
        raise SlimkitError(f"{p}: {x_name} has no samples (N = 0); save at least one sample per split")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise SlimkitError(f"{p}: {x_name} of shape {x.shape} looks channels-last (N, H, W, C); slimkit needs "
                           f"(N, C, H, W): save {x_name}.transpose(0, 3, 1, 2)")
    if not np.isfinite(x).all():
        raise SlimkitError(f"{p}: {x_name} holds NaN or infinite values; replace or drop those samples")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise SlimkitError(f"{p}: {y_name} holds labels from {int(y.min())} to {int(y.max())}; class labels must "
                           f"be 0, 1, ..., K-1 with K <= {MAX_CLASSES}: renumber them with "
                           f"np.unique(y, return_inverse=True)")
    return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)))


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """Load by name: 'fashion-mnist', 'digits', or a path to a .npz file."""
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(data_dir, val_fraction=val_fraction, seed=seed)
    if name == "digits":
        return load_digits(val_fraction=val_fraction, seed=seed)
    if name.endswith(".npz"):
        return load_npz(name, val_fraction=val_fraction, seed=seed)
    raise SlimkitError(f"unknown dataset {name!r}; use 'fashion-mnist', 'digits' or a path to a .npz file")
