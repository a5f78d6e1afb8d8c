"""Layer-by-layer calibration of a decoder LM: the inputs of each decoder block, their statistics, and
the step to the next block.

The inputs of block 0 are captured once (a pre-hook stops the forward there), then each block is
run on them and its outputs become the next block's inputs (`advance`), so a caller can change a
block (prune it) before its outputs are taken, and later blocks see the change. One-shot pruning
(oneshot.py), its streaming form (streaming.py) and OWL's dense pass (owl.py) share these steps.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import SlimkitError


class InputStats:
    """Running Σ x_j² (Wanda) or H = Σ x xᵀ (SparseGPT) of one Linear's inputs, in float32."""

    def __init__(self, width: int, hessian: bool, device: torch.device) -> None:
        self.sq = torch.zeros(width, device=device)
        self.h = torch.zeros(width, width, device=device) if hessian else None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.h is not None:
            self.h.addmm_(x.t(), x)


class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (Llama, Qwen, Mistral, GPT-NeoX, GPT-2 styles)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise SlimkitError(f"cannot find the decoder blocks of {type(model).__name__}")


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device):
    """Hidden states entering block 0 for every calibration batch, and each batch's keyword args.

    A forward pre-hook on block 0 stores its inputs and raises, so nothing after the embedding runs.
    Keyword args (rotary embeddings, attention mask) are kept per batch because a shorter last
    batch may get a mask of another shape.
    """
    layers = decoder_layers(model)
    inputs: list[torch.Tensor] = []
    kwargs_list: list[dict] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append(hidden.detach().to(device))
        kept = {k: _to(v, device) for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        kept["use_cache"] = False
        kwargs_list.append(kept)
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[i:i + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return inputs, kwargs_list


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _block_out(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def collect_input_stats(block: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict], hessian: bool,
                        device: torch.device) -> dict[nn.Linear, InputStats]:
    """Input statistics of every Linear in `block` over all calibration batches.

    Linears that read the very same tensor (q/k/v, gate/up) share one `InputStats`: the Hessian is
    computed once per distinct input. Sharing is decided by tensor identity, and every input seen in
    a batch is referenced until the batch ends: comparing addresses alone is wrong, because the
    allocator may hand a freed input's memory to a later one (e.g. the MLP's input reusing the
    attention input's storage), which would give a layer another layer's Hessian.
    """
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    owner: dict[nn.Linear, nn.Linear] = {}
    own_stats: dict[nn.Linear, InputStats] = {}
    batch_inputs: list[tuple[torch.Tensor, nn.Linear]] = []

    def make_hook(lin: nn.Linear):
        def hook(_m, inp, _out):
            x = inp[0]
            if lin not in owner:
                owner[lin] = next((o for t, o in batch_inputs if t is x), lin)
                if owner[lin] is lin:
                    own_stats[lin] = InputStats(x.shape[-1], hessian, device)
            batch_inputs.append((x, lin))
            if owner[lin] is lin:
                own_stats[lin].add(x)
        return hook

    handles = [lin.register_forward_hook(make_hook(lin)) for lin in linears]
    try:
        for h, kw in zip(hidden, kwargs):
            _block_out(block, h, kw)
            batch_inputs.clear()
    finally:
        for handle in handles:
            handle.remove()
    return {lin: own_stats[owner[lin]] for lin in linears}


@torch.no_grad()
def advance(block: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]) -> None:
    """Replace each batch's block inputs by the block's outputs, in place so only one copy is held."""
    for j, kw in enumerate(kwargs):
        hidden[j] = _block_out(block, hidden[j], kw)


__all__ = ["InputStats", "advance", "capture_block_inputs", "collect_input_stats", "decoder_layers"]
