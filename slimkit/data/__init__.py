"""Datasets as in-memory tensors, with seeded splits and a fast batch iterator.

Image data sets here are small (Fashion-MNIST is 47 MB as float32), so they are held as tensors and
batched by slicing: on 2 CPU cores this is several times faster than a per-sample DataLoader.
"""

from slimkit.data.arrays import Dataset, Split, batches, split_train_val
from slimkit.data.rendered_text import RenderedWords, render_words, text_recognition_data
from slimkit.data.sources import DEFAULT_FASHION_MNIST_DIR, load_dataset, load_digits, load_fashion_mnist, load_npz

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "Dataset",
    "RenderedWords",
    "Split",
    "batches",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "render_words",
    "split_train_val",
    "text_recognition_data",
]
