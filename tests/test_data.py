import gzip
import re
import struct

import numpy as np
import pytest
import torch

from slimkit.data import (
    DEFAULT_FASHION_MNIST_DIR,
    Split,
    batches,
    load_dataset,
    load_fashion_mnist,
    load_npz,
    split_train_val,
)
from slimkit.errors import SlimkitError


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_user_folder(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    data = load_fashion_mnist(tmp_path, val_fraction=0.2, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert data.sample_shape == (1, 28, 28)
    assert data.train.y.dtype == torch.int64


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(SlimkitError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(SlimkitError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nope")


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28) + b"\x00" * 100)
    from slimkit.data.sources import read_idx

    with pytest.raises(SlimkitError, match="truncated"):
        read_idx(path)


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_is_standardised_and_complete():
    data = load_fashion_mnist()
    assert len(data.train) + len(data.val) == 60_000 and len(data.test) == 10_000
    assert abs(data.train.x.mean().item()) < 0.05 and abs(data.train.x.std().item() - 1) < 0.05
    assert sorted(data.test.y.unique().tolist()) == list(range(10))


def test_seeded_split_is_reproducible_and_disjoint():
    split = Split(torch.arange(100).float().reshape(100, 1, 1, 1), torch.arange(100))
    a_train, a_val = split_train_val(split, 0.2, seed=3)
    b_train, b_val = split_train_val(split, 0.2, seed=3)
    c_train, c_val = split_train_val(split, 0.2, seed=4)
    assert torch.equal(a_val.y, b_val.y) and not torch.equal(a_val.y, c_val.y)
    assert set(a_train.y.tolist()).isdisjoint(a_val.y.tolist())
    assert len(a_val) == 20 and len(a_train) == 80


def test_batches_cover_every_sample_once_and_return_indices():
    split = Split(torch.arange(10).float().reshape(10, 1, 1, 1), torch.arange(10))
    seen = []
    for x, y, idx in batches(split, 3, shuffle=True, seed=0):
        assert torch.equal(split.y[idx], y)
        seen += y.tolist()
    assert sorted(seen) == list(range(10))
    assert [len(y) for _, y, _ in batches(split, 3, drop_last=True)] == [3, 3, 3]


def test_npz_with_and_without_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.normal(size=(60, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 60))
    data = load_npz(path, seed=0)
    assert data.sample_shape == (1, 8, 8) and data.num_classes == 3
    assert len(data.train) + len(data.val) + len(data.test) == 60
    path2 = tmp_path / "split.npz"
    np.savez(path2, x=rng.normal(size=(40, 1, 4, 4)), y=rng.integers(0, 2, 40),
             x_test=rng.normal(size=(7, 1, 4, 4)), y_test=rng.integers(0, 2, 7))
    assert len(load_npz(path2).test) == 7


def test_npz_errors_are_specific(tmp_path):
    with pytest.raises(SlimkitError, match="does not exist"):
        load_npz(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((3, 2, 2)))
    with pytest.raises(SlimkitError, match="no array 'x'"):
        load_npz(bad)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(SlimkitError, match="without pickle"):
        load_npz(obj)


def test_digits_and_unknown_name(digits):
    assert digits.sample_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    with pytest.raises(SlimkitError, match="unknown dataset"):
        load_dataset("imagenet")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.array([["a"] * 4] * 20), y=np.zeros(20, int)), "x must hold real numbers, got dtype <U1"),
    (dict(x=np.zeros((0, 8, 8)), y=np.zeros(0, int)), "no samples (N = 0)"),
    (dict(x=np.zeros((20, 8, 8)), y=np.full(20, -1)), "labels from -1 to -1; class labels must be 0, 1, ..., K-1"),
    (dict(x=np.full((20, 8, 8), np.nan), y=np.zeros(20, int)), "NaN or infinite"),
    (dict(x=np.full((20, 8, 8), np.inf), y=np.zeros(20, int)), "NaN or infinite"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(19, int)), "x has 20 samples but y has 19"),
    (dict(x=np.zeros((20, 28, 28, 1)), y=np.zeros(20, int)), "looks channels-last (N, H, W, C)"),
    (dict(x=np.zeros((20, 32, 32, 3)), y=np.zeros(20, int)), "save x.transpose(0, 3, 1, 2)"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros((20, 1), int)), "y must be 1-D class labels"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(20)), "y must hold integer class labels"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(20, int), x_test=np.zeros((5, 8, 8))), "only one of x_test and y_test"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(20, int), x_test=np.zeros((5, 4, 4)), y_test=np.zeros(5, int)),
     "x_test samples have shape (1, 4, 4) but x samples (1, 8, 8)"),
    (dict(x=np.zeros((2, 8, 8)), y=np.zeros(2, int)), "too few samples"),
])
def test_npz_contents_are_checked_before_use(tmp_path, arrays, message):
    with pytest.raises(SlimkitError, match=re.escape(message)):
        load_npz(_npz(tmp_path / "d.npz", **arrays))


def test_npz_files_that_are_not_npz(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(SlimkitError, match="is empty"):
        load_npz(empty)
    whole = _npz(tmp_path / "whole.npz", x=np.zeros((20, 8, 8)), y=np.zeros(20, int)).read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SlimkitError, match="cannot read .* as .npz without pickle"):
        load_npz(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", np.zeros((20, 8, 8)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(SlimkitError, match="single array \\(.npy\\), not a .npz archive"):
        load_npz(tmp_path / "single.npz")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(SlimkitError, match="is a folder"):
        load_npz(tmp_path / "folder.npz")


def test_truncated_idx_header_is_rejected(tmp_path):
    from slimkit.data.sources import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00")
    with pytest.raises(SlimkitError, match="truncated"):
        read_idx(path)
