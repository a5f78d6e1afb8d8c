"""Sequence metrics as pure functions: edit distance, greedy CTC decoding, character error rate.

A text recogniser trained with CTC emits one class distribution per frame; its transcript is the
frame-wise argmax with repeats merged and blanks dropped (greedy decoding). The character error
rate is the Levenshtein distance to the reference summed over a set, divided by the number of
reference characters, so long words weigh more than short ones, as in speech and OCR papers.
"""

from collections.abc import Sequence

import torch


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning hyp into ref."""
    row = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        prev, row[0] = row[:], i
        for j, r in enumerate(ref, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (h != r))
    return row[-1]


def ctc_greedy_decode(logits: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path transcripts of (N, T, C) frame scores: argmax per frame, repeats merged, blanks removed."""
    out = []
    for frames in logits.argmax(-1).tolist():
        seq, prev = [], None
        for k in frames:
            if k != prev and k != blank:
                seq.append(k)
            prev = k
        out.append(seq)
    return out


def error_counts(hyps: Sequence[Sequence], refs: Sequence[Sequence]) -> tuple[int, int]:
    """(total edit distance, total reference length) over pairs; their ratio is the error rate."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)), sum(len(r) for r in refs)


def character_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Σ edit distance / Σ reference characters (0 is perfect; can exceed 1 with many insertions)."""
    edits, chars = error_counts(hyps, refs)
    return edits / max(chars, 1)


__all__ = ["character_error_rate", "ctc_greedy_decode", "edit_distance", "error_counts"]
