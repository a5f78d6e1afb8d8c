"""Embedding fidelity as pure functions: how close a compressed encoder stays to its original.

Cosine to the original's embedding of the same input measures each vector; nearest-neighbour
agreement measures what retrieval sees: for each input, is its nearest other input the same under
both models?
"""

import torch
import torch.nn.functional as F


def cosine_sum(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Σ cos(student_i, teacher_i) over the rows of two (N, D) embedding matrices."""
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).sum())


def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same under both embeddings."""
    if student.shape[0] < 2:
        raise ValueError("nearest-neighbour agreement needs at least 2 embeddings")
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    nn_s = (s @ s.T).masked_fill(eye, -2).argmax(1)
    nn_t = (t @ t.T).masked_fill(eye, -2).argmax(1)
    return float((nn_s == nn_t).float().mean())


__all__ = ["cosine_sum", "neighbour_agreement"]
