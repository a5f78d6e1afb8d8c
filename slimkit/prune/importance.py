"""Channel importance as pure functions over one coupled group.

A group (from Torch-Pruning's DependencyGraph) is flattened into `Slice`s: one per parameter that
the group cuts, with the indices it cuts and the *root* channel each index belongs to (a
flatten->Linear consumer sees C*H*W inputs that map back to C channels). Every score function
takes slices (or activations) and returns one score per root channel; higher means keep. None of
them touch a model, so they are easy to test and to combine.
"""

from dataclasses import dataclass

import torch

from slimkit.errors import SlimkitError

IMPORTANCE_KINDS = ("l1", "l2", "bn", "taylor", "entropy")


@dataclass(frozen=True)
class Slice:
    """One parameter cut by a group: `weight[idxs]` along `dim`, each index tied to `root_idxs`."""

    weight: torch.Tensor
    grad: torch.Tensor | None
    dim: int
    idxs: list[int]
    root_idxs: list[int]
    kind: str  # "weight" (conv/linear/attention projections), "norm" (BN/LN/GN scale) or "param"


def _rows(s: Slice, tensor: torch.Tensor) -> torch.Tensor:
    """(len(idxs), rest) view of `tensor` with the cut dimension first."""
    picked = tensor.detach().index_select(s.dim, torch.as_tensor(s.idxs, dtype=torch.long))
    return picked.transpose(0, s.dim).reshape(len(s.idxs), -1).float()


def _scatter(n: int, s: Slice, values: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float64)
    return out.index_add_(0, torch.as_tensor(s.root_idxs, dtype=torch.long), values.double())


def magnitude_scores(slices: list[Slice], n: int, p: int = 2) -> torch.Tensor:
    """Sum over the group's weights of each channel's Lp norm (p=1 or 2): cheap, data-free."""
    if p not in (1, 2):
        raise SlimkitError(f"magnitude norm p must be 1 or 2, got {p}")
    total = torch.zeros(n, dtype=torch.float64)
    for s in slices:
        if s.kind == "weight":
            total += _scatter(n, s, _rows(s, s.weight).norm(p=p, dim=1))
    return total


def bn_scale_scores(slices: list[Slice], n: int) -> torch.Tensor:
    """|gamma| of the group's normalisation layers (network slimming); L2 when the group has none.

    A group without BN/LN/GN (an MLP's hidden neurons) has no scale to read, so it falls back to
    the L2 magnitude rather than failing: the caller asked for a ranking of every group.
    """
    norms = [s for s in slices if s.kind == "norm"]
    if not norms:
        return magnitude_scores(slices, n, 2)
    total = torch.zeros(n, dtype=torch.float64)
    for s in norms:
        total += _scatter(n, s, _rows(s, s.weight).abs().sum(1))
    return total


def taylor_scores(slices: list[Slice], n: int) -> torch.Tensor:
    """First-order Taylor estimate of the loss change, sum of |w * dL/dw| over the channel's weights.

    The gradients are accumulated over a few calibration batches before calling this.
    """
    total = torch.zeros(n, dtype=torch.float64)
    found = False
    for s in slices:
        if s.grad is None or s.kind == "param":
            continue
        found = True
        total += _scatter(n, s, (_rows(s, s.weight) * _rows(s, s.grad)).abs().sum(1))
    if not found:
        raise SlimkitError("taylor importance needs gradients; run the calibration batches with a loss first")
    return total


def entropy_scores(values: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Shannon entropy (nats) of each channel's activation histogram; `values` is (channels, samples).

    Histogram rather than Gaussian: a Gaussian estimate is 0.5*log(2*pi*e*var), a monotone function
    of the variance, so it would only re-rank channels by their spread and miss what matters after a
    ReLU, namely channels that are almost always zero (one spike, entropy ~0) or saturated. The bins
    share one range across the group so that a channel with tiny values falls in few bins and scores
    low, as it should: the next layer barely sees it.
    """
    if values.dim() != 2 or values.shape[1] == 0:
        raise SlimkitError(f"entropy needs a (channels, samples) tensor with samples, got {tuple(values.shape)}")
    v = values.float()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return torch.zeros(v.shape[0], dtype=torch.float64)
    idx = ((v - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(v.shape[0], bins, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    prob = counts / counts.sum(1, keepdim=True)
    return -(prob * torch.log(prob.clamp(min=1e-12))).sum(1)


def channel_values(activation: torch.Tensor, channel_dim: int, idxs: list[int], root_idxs: list[int], n: int,
                   max_samples: int = 4096, seed: int = 0) -> torch.Tensor:
    """(n, samples) values per root channel from one activation, subsampled reproducibly.

    Channels that a flatten spreads over several indices pool those indices' values.
    """
    a = activation.detach().movedim(channel_dim, 0).reshape(activation.shape[channel_dim], -1)
    a = a[torch.as_tensor(idxs, dtype=torch.long)]
    per_root: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for row, r in zip(a, root_idxs):
        per_root[r].append(row)
    rows = [torch.cat(r) if r else torch.zeros(1) for r in per_root]
    width = min(min(len(r) for r in rows), max_samples)
    g = torch.Generator().manual_seed(seed)
    return torch.stack([r[torch.randperm(len(r), generator=g)[:width]] for r in rows])


def block_cosines(x_in: torch.Tensor, x_out: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """cos(input, output) of a residual block at every pixel or token (over the channels)."""
    if x_in.shape != x_out.shape:
        raise SlimkitError(f"block influence needs equal input/output shapes, got {tuple(x_in.shape)} and {tuple(x_out.shape)}")
    return torch.nn.functional.cosine_similarity(x_in.double(), x_out.double(), dim=channel_dim, eps=1e-12)


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor, channel_dim: int) -> float:
    """1 - cos(input, output) of a residual block, averaged over pixels or tokens.

    A block whose output points the same way as its input adds little information; a low value
    marks it as removable.
    """
    return float(1.0 - block_cosines(x_in, x_out, channel_dim).mean())


def head_scores(channel_scores: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Average the scores of each head's channels (the head is removed or kept whole)."""
    if channel_scores.numel() % num_heads:
        raise SlimkitError(f"{channel_scores.numel()} channels do not split into {num_heads} heads")
    return channel_scores.view(num_heads, -1).mean(1)
