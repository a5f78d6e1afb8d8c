"""One-shot pruning of every Linear in a decoder LM's blocks: magnitude, Wanda and SparseGPT.

Calibration is sequential (calibration.py): the inputs of block 0 are captured once (a pre-hook stops the forward
there), then each block is calibrated on the outputs of the already-pruned blocks before it, so
errors made early are seen, and partly compensated, by later blocks. Only one block and the
calibration activations need to live on the compute device at a time: blocks are moved to the
GPU one by one when there is one, and pruned on the CPU otherwise.

The mask rules themselves (`nm_mask`, `row_mask`, `sparsegpt_prune`) are pure functions of tensors
so they can be tested on a single layer; `sparsify_block` applies them to one block, so that
`slimkit.llm.streaming` can run the same per-block steps on a model read from disk block by block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from slimkit.errors import SlimkitError, check_sparsity
from slimkit.llm.calibration import (advance, capture_block_inputs, collect_input_stats,
                                     decoder_layers)
from slimkit.llm.owl import LAMBDA_DEFAULT, M_DEFAULT, block_outlier_shares, owl_sparsities
from slimkit.prune.result import PruneResult

METHODS = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "owl")  # how the ratio is spread over the decoder blocks (owl.py)


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep N of every M consecutive input weights. None passes through."""
    if text is None or text == "":
        return None
    try:
        n_str, m_str = str(text).split(":")
        n, m = int(n_str), int(m_str)
    except ValueError:
        raise SlimkitError(f"N:M must look like '2:4', got {text!r}") from None
    if not 0 < n < m:
        raise SlimkitError(f"N:M needs 0 < N < M, got {text!r}")
    return n, m


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing exactly floor(sparsity·cols) lowest-scoring weights in each output row."""
    k = int(score.shape[1] * sparsity)
    mask = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(score, k, dim=1, largest=False).indices
        mask.scatter_(1, idx, False)
    return mask


def matrix_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing exactly floor(sparsity·numel) lowest-scoring weights of the whole matrix."""
    k = int(score.numel() * sparsity)
    mask = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        mask[torch.topk(score.flatten(), k, largest=False).indices] = False
    return mask.view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly n kept weights in every group of m consecutive inputs of a row."""
    rows, cols = score.shape
    if cols % m:
        raise SlimkitError(f"N:M {n}:{m} needs the input width ({cols}) to be a multiple of {m}")
    groups = score.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                    blocksize: int = 128, percdamp: float = 0.01, mask_scope: str = "row"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: choose a mask by OBS saliency w²/[H⁻¹]²_ii and update the remaining weights.

    Columns are processed left to right in lazy blocks of `blocksize`: pruning column i spreads its
    error over the not-yet-processed columns through the Cholesky factor of H⁻¹, and the block's
    accumulated error reaches later blocks in one matmul. H = Σ xxᵀ is damped by
    `percdamp`·mean(diag H) so that inversion is stable for inputs that hardly vary.
    `mask_scope='row'` selects the unstructured mask within each output row of each block (a
    per-output comparison group, as Wanda does), 'block' over the whole block as in the paper.
    Returns (new weight in `weight`'s dtype, keep-mask); the mask removes exactly N:M, or exactly
    floor(s·width) per row of each block (row scope) / per block (block scope).
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    keep = torch.ones_like(w, dtype=torch.bool)
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except RuntimeError:
        raise SlimkitError("the calibration Hessian is not positive definite; raise percdamp or use more samples") from None
    if nm is not None and blocksize % nm[1]:
        blocksize = nm[1] * max(1, blocksize // nm[1])
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = torch.diag(hinv1)
        if nm is None:
            saliency = w1 ** 2 / diag.reshape(1, -1) ** 2
            prune = ~(row_mask(saliency, sparsity) if mask_scope == "row" else matrix_mask(saliency, sparsity))
        else:
            prune = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                sal = w1[:, i:i + nm[1]] ** 2 / diag[i:i + nm[1]].reshape(1, -1) ** 2
                prune[:, i:i + nm[1]] = ~nm_mask(sal, *nm)
            q = col.clone()
            q[prune[:, i]] = 0.0
            q1[:, i] = q
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~prune
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w.to(weight.dtype), keep


def score_mask(method: str, weight: torch.Tensor, sq_norm: torch.Tensor | None, sparsity: float,
               nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask for magnitude (|W|, whole matrix) or Wanda (|W|·‖x_j‖₂, per output row)."""
    if method == "magnitude":
        score = weight.abs().float()
        return nm_mask(score, *nm) if nm else matrix_mask(score, sparsity)
    if sq_norm is None:
        raise SlimkitError("Wanda needs calibration input norms")
    score = weight.abs().float() * sq_norm.sqrt().reshape(1, -1)
    return nm_mask(score, *nm) if nm else row_mask(score, sparsity)


def oneshot_result(model: nn.Module | None, method: str, sparsity: float, nm: tuple[int, int] | None,
                   counts: dict[str, tuple[int, int]], order: list[int], start: float, calibration: str,
                   masks: dict[str, torch.Tensor] | None = None) -> PruneResult:
    """The PruneResult of a one-shot prune, from (kept, total) weights per pruned Linear weight.

    `details` hold the target `sparsity` (1 - N/M with `nm`), the blocks in the order they were
    pruned, the wall time since `start` and what the calibration was.
    """
    kept = sum(k for k, _ in counts.values())
    total = sum(n for _, n in counts.values())
    return PruneResult(model, method, kept_per_layer={name: k / n for name, (k, n) in counts.items()},
                       kept_total=kept / total if total else 1.0, masks=masks or {},
                       details={"sparsity": sparsity, "nm": nm, "block_order": order,
                                "seconds": time.perf_counter() - start, "calibration": calibration})


def check_oneshot_args(method: str, sparsity: float, nm: tuple[int, int] | str | None, mask_scope: str,
                       allocation: str = "uniform", owl_lambda: float = LAMBDA_DEFAULT,
                       names: tuple[str, str] = ("method", "sparsity")) -> tuple[float, tuple[int, int] | None]:
    """Validate the settings shared by the in-memory and streaming paths; returns (sparsity, nm).

    Checked before any model is touched, so bad input fails in one line and not after minutes of
    loading. With N:M the pattern fixes the ratio, so `sparsity` becomes 1 - N/M. `names` are what
    the messages call the method and the ratio (a command line passes its option names).
    """
    if method not in METHODS:
        raise SlimkitError(f"unknown {names[0]} {method!r}; choose one of {', '.join(METHODS)}")
    nm = parse_nm(nm) if isinstance(nm, str) or nm is None else nm
    if nm is None:
        check_sparsity(sparsity, names[1])
    else:
        sparsity = 1.0 - nm[0] / nm[1]
    if mask_scope not in ("row", "block"):
        raise SlimkitError(f"mask_scope must be 'row' or 'block', got {mask_scope!r}")
    if allocation not in ALLOCATIONS:
        raise SlimkitError(f"unknown allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
    if allocation == "owl":
        if nm is not None:
            raise SlimkitError("OWL gives blocks different ratios, and an N:M pattern fixes one ratio everywhere; use "
                               "--ratio with owl, or N:M with uniform allocation")
        if method == "magnitude":
            raise SlimkitError("OWL ranks blocks by outliers in Wanda scores, which need calibration inputs; use "
                               "--method wanda or sparsegpt with owl")
        owl_sparsities([0.0, 1.0], sparsity, owl_lambda)  # a ratio too close to 0 or 1: one line, before any work
    return sparsity, nm


def compute_device(device: str | torch.device | None) -> torch.device:
    """The device blocks are pruned on: the one asked for, else the GPU when there is one."""
    return torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def sparsify_block(block: nn.Module, method: str, sparsity: float, nm: tuple[int, int] | None,
                   hidden: list[torch.Tensor] | None, kwargs: list[dict] | None, device: torch.device,
                   blocksize: int = 128, percdamp: float = 0.01, mask_scope: str = "row"
                   ) -> dict[nn.Linear, torch.Tensor]:
    """Prune every Linear of one block in place; returns each Linear's keep-mask (on the block's device).

    Magnitude needs no inputs; Wanda and SparseGPT calibrate on `hidden`/`kwargs`, the inputs of
    this block, which the caller produced with the blocks before it already pruned.
    """
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    masks: dict[nn.Linear, torch.Tensor] = {}
    if method == "magnitude":
        for lin in linears:
            keep = score_mask("magnitude", lin.weight, None, sparsity, nm)
            lin.weight.mul_(keep.to(lin.weight.dtype))
            masks[lin] = keep
        return masks
    stats = collect_input_stats(block, hidden, kwargs, method == "sparsegpt", device)
    for lin in linears:
        st = stats[lin]
        if method == "wanda":
            keep = score_mask("wanda", lin.weight, st.sq, sparsity, nm)
            lin.weight.mul_(keep.to(lin.weight.dtype))
        else:
            hess = st.h * (2.0 / max(st.tokens, 1))
            new, keep = sparsegpt_prune(lin.weight, hess, sparsity, nm, blocksize, percdamp, mask_scope)
            lin.weight.copy_(new)
        masks[lin] = keep
    return masks


@torch.no_grad()
def prune_oneshot(model: nn.Module, windows: torch.Tensor | None, method: str = "sparsegpt", sparsity: float = 0.5,
                  nm: tuple[int, int] | str | None = None, batch_size: int = 2, percdamp: float = 0.01,
                  blocksize: int = 128, mask_scope: str = "row", layers: list[int] | None = None,
                  device: str | torch.device | None = None, progress: bool = True,
                  on_block: Callable[[int], None] | None = None, allocation: str = "uniform",
                  owl_m: float = M_DEFAULT, owl_lambda: float = LAMBDA_DEFAULT) -> PruneResult:
    """Prune every Linear inside the decoder blocks in place; embeddings and lm_head stay dense.

    `windows` is (n, L) calibration token ids (unused by magnitude). With `nm`, N:M replaces the
    unstructured ratio. `layers` limits pruning to some block indices (tests use one or two).
    The result holds the keep-masks so that fine-tuning can hold them (MaskHolder). `batch_size`
    windows go through a block at once: small batches keep the transient activations (attention,
    FFN) small, which is what bounds peak memory beyond the model itself. The whole model must fit in memory;
    `slimkit.llm.streaming.prune_oneshot_folder` does the same from a checkpoint one block at a time.
    `allocation="owl"` spreads `sparsity` over the blocks by their outlier shares (owl.py; `owl_m`,
    `owl_lambda`), measured on the dense model first; `details["allocation"]` records each block's.
    """
    sparsity, nm = check_oneshot_args(method, sparsity, nm, mask_scope, allocation, owl_lambda)
    dev = compute_device(device)
    start = time.perf_counter()
    blocks = decoder_layers(model)
    todo = list(range(len(blocks))) if layers is None else sorted(layers)
    names = {id(m): n for n, m in model.named_modules()}
    masks: dict[str, torch.Tensor] = {}
    order: list[int] = []
    model.eval()

    if method == "magnitude":
        for i in tqdm(todo, desc="magnitude", disable=not progress, leave=False):
            for lin, keep in sparsify_block(blocks[i], method, sparsity, nm, None, None, dev).items():
                masks[names[id(lin)] + ".weight"] = keep.cpu()
            order.append(i)
            if on_block:
                on_block(i)
        return _result(model, method, sparsity, nm, order, start, "none", masks)

    if windows is None:
        raise SlimkitError(f"{method} needs calibration windows")
    per_block = dict.fromkeys(todo, sparsity)
    alloc: dict = {"kind": "uniform"}
    if allocation == "owl":
        shares = block_outlier_shares(model, windows, todo, batch_size, dev, owl_m)
        per_block = dict(zip(todo, owl_sparsities([shares[i] for i in todo], sparsity, owl_lambda)))
        alloc = {"kind": "owl", "m": owl_m, "lambda": owl_lambda, "outlier_share": shares, "sparsity": per_block}
    hidden, kwargs = capture_block_inputs(model, windows, batch_size, dev)
    for i in tqdm(range(max(todo) + 1), desc=method, disable=not progress, leave=False):
        block = blocks[i]
        home = next(block.parameters()).device
        block.to(dev)
        if i in todo:
            block_masks = sparsify_block(block, method, per_block[i], nm, hidden, kwargs, dev, blocksize, percdamp,
                                         mask_scope)
            for lin, keep in block_masks.items():
                masks[names[id(lin)] + ".weight"] = keep.cpu()
            order.append(i)
            if on_block:
                on_block(i)
        advance(block, hidden, kwargs)  # next inputs, from the pruned block
        block.to(home)
    result = _result(model, method, sparsity, nm, order, start, f"{windows.shape[0]} x {windows.shape[1]} tokens",
                     masks)
    result.details["allocation"] = alloc
    return result


def _result(model, method, sparsity, nm, order, start, calibration, masks) -> PruneResult:
    counts = {name: (int(m.sum()), m.numel()) for name, m in masks.items()}
    return oneshot_result(model, method, sparsity, nm, counts, order, start, calibration, masks)
