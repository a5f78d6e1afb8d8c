"""Rendered words: a small, real text-recognition data set made on the spot, with nothing to download.

Words come from the texts shipped with slimkit (Austen's *Emma* and *Pride and Prejudice*), are
drawn with Pillow in the DejaVu Sans font (Debian's `fonts-dejavu-core`) at a seeded random size
and position, and labelled for CTC: characters as 1-based indices into the alphabet, 0 being the
blank. Validation and test words are kept out of the training vocabulary, so a recogniser's
character error rate there measures reading, not remembering. Used to train and distill CRNN-style
recognisers in tests and benchmarks.
"""

import re
from importlib import resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimkit.errors import SlimkitError

DEFAULT_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def word_list(min_len: int = 2, max_len: int = 6, alphabet: str = ALPHABET,
              texts: tuple[str, ...] = ("emma", "prideprejudice")) -> list[str]:
    """The distinct lowercase words of the built-in texts spelled only with `alphabet`, sorted."""
    allowed = set(alphabet)
    words: set[str] = set()
    for name in texts:
        text = resources.files("slimkit.resources").joinpath("text").joinpath(f"{name}.txt").read_text(encoding="utf-8")
        for w in re.findall(r"[^\W\d_]+", text.lower()):
            if min_len <= len(w) <= max_len and set(w) <= allowed:
                words.add(w)
    return sorted(words)


@dataclass(frozen=True)
class RenderedWords:
    """Images (N, 1, H, W) in [0, 1], white text on black; CTC labels (N, S) padded with 0 and their
    lengths (N,); the words themselves and the alphabet (class c is alphabet[c - 1], 0 is blank)."""

    images: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    words: list[str]
    alphabet: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.alphabet) + 1

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, lengths): the batch layout the CTC sequence task reads."""
        return self.images, self.labels, self.lengths

    def text(self, classes: list[int]) -> str:
        return "".join(self.alphabet[c - 1] for c in classes)


def _font(path: Path, size: int):
    from PIL import ImageFont

    if not path.is_file():
        raise SlimkitError(f"font {path} not found; install Debian's fonts-dejavu-core "
                           f"(sudo apt-get install fonts-dejavu-core) or pass font= a .ttf file")
    return ImageFont.truetype(str(path), size)


def render_words(words: list[str], height: int = 16, width: int = 64, sizes: tuple[int, ...] = (12, 13),
                 seed: int = 0, font: str | Path = DEFAULT_FONT, alphabet: str = ALPHABET) -> RenderedWords:
    """Draw each word once, at a seeded random font size from `sizes` and horizontal offset, with
    one pixel of vertical jitter. A word too wide for `width` is an error (choose a larger width)."""
    from PIL import Image, ImageDraw

    fonts = {s: _font(Path(font), s) for s in sizes}
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    rng = np.random.default_rng(seed)
    images = np.zeros((len(words), 1, height, width), np.float32)
    labels = torch.zeros(len(words), max((len(w) for w in words), default=0), dtype=torch.long)
    for n, word in enumerate(words):
        if not set(word) <= set(index):
            raise SlimkitError(f"word {word!r} has characters outside the alphabet {alphabet!r}")
        f = fonts[sizes[int(rng.integers(len(sizes)))]]
        img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(img)
        left, _, right, _ = draw.textbbox((0, 0), word, font=f)
        if right - left > width:
            raise SlimkitError(f"{word!r} is {right - left} px wide at size {f.size}, wider than width={width}")
        ascent, descent = f.getmetrics()
        x = int(rng.integers(0, width - (right - left) + 1)) - left
        y = (height - ascent - descent) // 2 + int(rng.integers(-1, 2))
        draw.text((x, y), word, fill=255, font=f)
        images[n, 0] = np.asarray(img, np.float32) / 255.0
        labels[n, :len(word)] = torch.tensor([index[c] for c in word])
    lengths = torch.tensor([len(w) for w in words], dtype=torch.long)
    return RenderedWords(torch.from_numpy(images), labels, lengths, list(words), alphabet)


def text_recognition_data(n_train: int = 2000, n_val: int = 300, n_test: int = 300, seed: int = 0,
                          height: int = 16, width: int = 64, max_len: int = 6,
                          font: str | Path = DEFAULT_FONT) -> dict[str, RenderedWords]:
    """Train, val and test sets of rendered words; val and test words never occur in train.

    Training words are drawn without replacement from the rest of the vocabulary while it lasts
    (each rendered at its own random size and position), then with replacement.
    """
    vocab = word_list(max_len=max_len)
    if n_val + n_test >= len(vocab):
        raise SlimkitError(f"{n_val} + {n_test} held-out words leave no training words out of {len(vocab)}")
    rng = np.random.default_rng(seed)
    order = [vocab[i] for i in rng.permutation(len(vocab))]
    val, test, rest = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    picks = list(rng.permutation(len(rest))[:n_train]) + list(rng.integers(0, len(rest), max(0, n_train - len(rest))))
    train = [rest[i] for i in picks]
    return {name: render_words(ws, height, width, seed=seed + k, font=font)
            for k, (name, ws) in enumerate((("train", train), ("val", val), ("test", test)))}


__all__ = ["ALPHABET", "DEFAULT_FONT", "RenderedWords", "render_words", "text_recognition_data", "word_list"]
