"""Calibration and evaluation token windows from plain text.

The defaults ship with the package (slimkit/resources/text): calibrate on Emma, evaluate on
Pride and Prejudice, so that the calibration text never overlaps the evaluation text.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import torch

from slimkit.errors import SlimkitError

BUILTIN_TEXTS = ("emma", "prideprejudice")


def read_text(name_or_path: str | os.PathLike) -> str:
    """A built-in text by name ('emma', 'prideprejudice') or any UTF-8 file."""
    text = str(name_or_path)
    if text in BUILTIN_TEXTS:
        return resources.files("slimkit.resources").joinpath("text").joinpath(f"{text}.txt").read_text(encoding="utf-8")
    path = Path(text).expanduser()
    if not path.is_file():
        raise SlimkitError(f"text {text!r} is neither a built-in ({', '.join(BUILTIN_TEXTS)}) nor a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlimkitError(f"{path} is not UTF-8 text") from None


def check_text(name_or_path: str | os.PathLike) -> None:
    """Refuse a text that is neither a built-in nor an existing file, before any model is loaded."""
    if str(name_or_path) not in BUILTIN_TEXTS and not Path(str(name_or_path)).expanduser().is_file():
        raise SlimkitError(f"text {str(name_or_path)!r} is neither a built-in ({', '.join(BUILTIN_TEXTS)}) nor a file; "
                           f"pass one of those or the path of a UTF-8 text file")


def tokenize(tokenizer, text: str, max_tokens: int | None = None, chunk_chars: int = 200_000) -> torch.Tensor:
    """1-D LongTensor of token ids for `text` (no special tokens), cut to `max_tokens`.

    The text is tokenized in paragraph-aligned chunks only as far as needed, so asking for the
    first 16k tokens of a novel does not tokenize the whole novel.
    """
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):  # cut at a paragraph boundary so no word is split across chunks
            cut = text.rfind("\n\n", start, end)
            if cut > start:
                end = cut + 2
        ids.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    out = torch.tensor(ids, dtype=torch.long)
    return out[:max_tokens] if max_tokens is not None else out


def calibration_windows(tokenizer, text: str = "emma", n_samples: int = 64, seq_len: int = 512,
                        seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) windows drawn at seeded random offsets from the whole text.

    Random offsets (rather than the first n·L tokens) cover the whole book, which is what one-shot
    pruners expect of calibration data; the seed makes the draw reproducible.
    """
    if n_samples < 1 or seq_len < 2:
        raise SlimkitError(f"need n_samples >= 1 and seq_len >= 2, got {n_samples} and {seq_len}")
    ids = tokenize(tokenizer, read_text(text))
    if ids.numel() < seq_len + 1:
        raise SlimkitError(f"text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def text_windows(tokenizer, text: str | os.PathLike, seq_len: int) -> tuple[torch.Tensor, int]:
    """Every non-overlapping (n, seq_len) window of a whole text, in order, and the text's token count.

    Non-overlapping windows are distinct text: training on n of them shows n * seq_len different
    tokens, where n windows at random offsets (calibration_windows) repeat much of a short book."""
    if seq_len < 2:
        raise SlimkitError(f"need seq_len >= 2, got {seq_len}")
    ids = tokenize(tokenizer, read_text(text))
    n = ids.numel() // seq_len
    return ids[:n * seq_len].view(n, seq_len), ids.numel()


def eval_windows(tokenizer, text: str = "prideprejudice", n_tokens: int = 16384, seq_len: int = 512) -> torch.Tensor:
    """(n_tokens // seq_len, seq_len) non-overlapping windows over the first n_tokens tokens."""
    if seq_len < 2 or n_tokens < seq_len:
        raise SlimkitError(f"need seq_len >= 2 and n_tokens >= seq_len, got seq_len={seq_len}, n_tokens={n_tokens}")
    ids = tokenize(tokenizer, read_text(text), max_tokens=n_tokens)
    n = ids.numel() // seq_len
    if n == 0:
        raise SlimkitError(f"text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def sentences(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Sentences of a plain text (split after . ! ?), whitespace-normalised, of a usable length."""
    flat = re.sub(r"\s+", " ", text)
    out = [s.strip() for s in re.split(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<=[.!?])\s+(?=[A-Z\"'])", flat)]
    return [s for s in out if min_words <= len(s.split()) <= max_words]


def encode_sentences(tokenizer, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    """Token tensors for all `texts`, padded to the longest; the embeddings task trims each batch
    to its own longest sentence, so batches see what per-batch tokenization would give."""
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
