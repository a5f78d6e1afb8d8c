"""Width and depth pruning of BERT-style sentence encoders (MiniLM), with output reconstruction.

Which units go: FFN neurons score ‖a_j‖₂·‖W_out[:, j]‖₂ and heads Σ‖o_h‖₂·‖W_o[:, h]‖_F over
calibration tokens (padding excluded), so what rarely fires or barely reaches the residual stream
goes first. Counts are uniform per layer so that `intermediate_size` stays a valid config value.

Removing units leaves the projection that reads them (attention output, FFN output) with a
systematic error. `reconstruct=True` refits that projection by least squares on the calibration
activations: with X the projection's inputs (plus a constant column for the bias), the kept
columns K get W' = W·G[:, K]·(G[K, K] + λI)⁻¹ where G = XᵀX. This is the closed form of
min ‖W·x − W'·x_K‖² over calibration tokens; the constant column carries the mean contribution of
the removed units into the bias. Layers are processed in order on the *pruned* model's hidden
states (sequential calibration), so each refit also absorbs the errors of the layers before it,
and memory stays at one layer's activations. On MiniLM (-50% FFN, -25% heads) this lifts
embedding cosine to the unpruned model from 0.72 to 0.91 before any training (1,024 sentences).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import SlimkitError, check_sparsity
from slimkit.llm.width import head_columns
from slimkit.prune.result import PruneResult
from slimkit.prune.slicing import shrink_linear


@torch.no_grad()
def remove_encoder_heads(layer: nn.Module, keep: list[int], head_size: int) -> None:
    """Keep the listed heads of one BERT layer: shrink Q/K/V rows and the output projection's columns."""
    sa = layer.attention.self
    idx = head_columns(sorted(keep), head_size)
    sa.query = shrink_linear(sa.query, out_idx=idx)
    sa.key = shrink_linear(sa.key, out_idx=idx)
    sa.value = shrink_linear(sa.value, out_idx=idx)
    layer.attention.output.dense = shrink_linear(layer.attention.output.dense, in_idx=idx)
    sa.num_attention_heads = len(keep)
    sa.all_head_size = len(keep) * head_size


def reconstruct_linear(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, keep: torch.Tensor,
                       damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares refit of a Linear that will read only the inputs in `keep`.

    `gram` is XᵀX of the inputs with a trailing constant-1 column, (in+1)×(in+1), in float64.
    Returns (weight over the kept inputs, bias), in the weight's dtype. `damp` adds that fraction of
    the mean diagonal to the kept block, which keeps the solve stable when inputs are correlated.
    """
    n_in = weight.shape[1]
    if gram.shape != (n_in + 1, n_in + 1):
        raise SlimkitError(f"gram must be {(n_in + 1, n_in + 1)} for a Linear with {n_in} inputs, got {tuple(gram.shape)}")
    b = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    full = torch.cat([weight, b[:, None]], 1).to(gram)
    cols = torch.cat([keep.to(gram.device), torch.tensor([n_in], device=gram.device)])
    g_kk = gram[cols][:, cols]
    g_kk = g_kk + damp * g_kk.diagonal().mean() * torch.eye(len(cols), dtype=gram.dtype, device=gram.device)
    refit = torch.linalg.solve(g_kk, (full @ gram[:, cols]).T).T.to(weight.dtype)
    return refit[:, :-1].contiguous(), refit[:, -1].contiguous()


def _replace(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


class _Gram:
    """Forward hook accumulating XᵀX (with a constant column) of a Linear's inputs over real tokens."""

    def __init__(self, width: int) -> None:
        self.value = torch.zeros(width + 1, width + 1, dtype=torch.float64)
        self.token_mask: torch.Tensor | None = None

    def __call__(self, _module, inp, _out) -> None:
        x = inp[0].detach()
        x = x[self.token_mask.bool()] if self.token_mask is not None else x.reshape(-1, x.shape[-1])
        x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], 1)
        self.value += (x.T @ x).cpu()


class _Stop(Exception):
    pass


# Where an encoder layer keeps its FFN: (the projection that writes the neurons, the one that reads
# them). BERT-style layers and transformers 5's ViT-style layers name them differently.
FFN_PATHS = (("intermediate.dense", "output.dense"), ("mlp.fc1", "mlp.fc2"))


def ffn_paths(layer: nn.Module) -> tuple[str, str] | None:
    """The (up, down) FFN projection paths of one encoder layer, or None when it has neither layout."""
    names = dict(layer.named_modules())
    return next(((up, down) for up, down in FFN_PATHS if isinstance(names.get(up), nn.Linear)
                 and isinstance(names.get(down), nn.Linear)), None)


def encoder_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The layer list of a BERT- or ViT-style encoder, alone or as a model's base (a sequence or
    image classifier: `bert.encoder.layer`, `vit.layers`), and its module path."""
    for name, module in model.named_modules():
        if (name.endswith("encoder.layer") or name.endswith("layers")) and isinstance(module, nn.ModuleList) \
                and len(module) and all(ffn_paths(layer) for layer in module):
            return module, name
    raise SlimkitError(f"{type(model).__name__} has no encoder layer list whose layers hold an FFN "
                       f"({' / '.join(a + ' + ' + b for a, b in FFN_PATHS)}); slimkit's encoder pruning takes "
                       f"BERT-style and ViT-style Hugging Face encoders")


def set_encoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    """Put `layers` where encoder_layers found the old list, and keep the config's count in step."""
    _, path = encoder_layers(model)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, layers)
    model.config.num_hidden_layers = len(layers)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def text_batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Calibration inputs from sentences: tokenizer batches, padded per batch."""
    return [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def _layer_inputs(model: nn.Module, inputs: list):
    """Per batch: hidden states entering layer 0, the layer's other args, and the real-token mask.

    `inputs` are model inputs (dicts of tensors, or a tensor such as an image batch). A pre-hook on
    layer 0 records what the encoder passes (the prepared attention mask among the positional
    args) and stops the forward there, so only the embeddings run. The mask is the batch's
    attention_mask when it has one (padding is then left out of every statistic), else None.
    """
    batches = []

    def hook(_module, args, kwargs):
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        batches.append([hidden.detach(), (rest, dict(kwargs))])
        raise _Stop

    device = next(model.parameters()).device
    handle = encoder_layers(model)[0][0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for enc in inputs:
            enc = {k: v.to(device) for k, v in enc.items() if k != "labels"} if isinstance(enc, dict) else enc.to(device)
            try:
                model(**enc) if isinstance(enc, dict) else model(enc)
            except _Stop:
                mask = enc.get("attention_mask") if isinstance(enc, dict) else None
                if mask is not None and mask.shape != batches[-1][0].shape[:2]:
                    mask = None  # the layer sees other positions than the tokens (e.g. a class token added)
                batches[-1].append(mask)
    finally:
        handle.remove()
    return batches


def _run_layer(layer: nn.Module, batches, gram: _Gram | None = None, target: nn.Linear | None = None,
               advance: bool = False) -> None:
    handle = target.register_forward_hook(gram) if target is not None else None
    try:
        for b in batches:
            if gram is not None:
                gram.token_mask = b[2]
            out = layer(b[0], *b[1][0], **b[1][1])
            if advance:
                b[0] = out[0] if isinstance(out, tuple) else out
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def prune_encoder(model: nn.Module, tokenizer=None, texts: list[str] | None = None, ffn_ratio: float = 0.5,
                  head_ratio: float = 0.25, drop_layers: int = 0, reconstruct: bool = True, batch_size: int = 64,
                  max_length: int = 64, inputs: list | None = None) -> PruneResult:
    """Remove FFN neurons, heads and (the last) layers by activation-aware importance, in place.

    Calibration comes from `texts` through `tokenizer`, or from `inputs`: model input batches as
    the model takes them (dicts of tensors, or tensors such as images), which is how a classifier
    whose base is a BERT- or ViT-style encoder is calibrated on its own data. The result's `kept`
    holds (kept, original) heads per `<encoder>.layer.<i>.attention` and neurons per
    `<encoder>.layer.<i>.intermediate`, `removed_heads` the removed heads and `removed_blocks` the
    dropped layers. With `reconstruct`, each layer's attention-output and FFN-output projections
    are refitted by least squares on the calibration data, layer by layer on the pruned model's own
    hidden states (see the module docstring); with no head removed the attention output is left
    as it is.
    """
    check_sparsity(ffn_ratio, "ffn_ratio")
    check_sparsity(head_ratio, "head_ratio")
    if inputs is None:
        if not texts or tokenizer is None:
            raise SlimkitError("prune_encoder needs calibration sentences and their tokenizer, or inputs=, got none")
        inputs = text_batches(tokenizer, texts, batch_size, max_length)
    if not inputs:
        raise SlimkitError("prune_encoder needs calibration inputs, got none")
    cfg = model.config
    layers, path = encoder_layers(model)
    n_layers = len(layers)
    if head_ratio > 0 and not all(hasattr(getattr(lay, "attention", None), "self") for lay in layers):
        raise SlimkitError("prune_encoder removes heads of BERT-style layers (attention.self) only; this encoder's "
                           "attention is laid out otherwise: use head_ratio=0")
    if not 0 <= drop_layers < n_layers:
        raise SlimkitError(f"can drop 0..{n_layers - 1} layers, asked for {drop_layers}")
    removed_blocks = [f"{path}.{i}" for i in range(n_layers - drop_layers, n_layers)]
    if drop_layers:
        set_encoder_layers(model, layers[: n_layers - drop_layers])
        layers = encoder_layers(model)[0]
    model.eval()
    head_size = cfg.hidden_size // cfg.num_attention_heads
    n_ffn = cfg.intermediate_size - int(cfg.intermediate_size * ffn_ratio)
    n_heads = cfg.num_attention_heads - int(cfg.num_attention_heads * head_ratio)
    batches = _layer_inputs(model, inputs)
    n_dense_heads, n_dense_ffn = cfg.num_attention_heads, cfg.intermediate_size
    kept_widths: dict[str, tuple[int, int]] = {}
    removed_heads: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        if n_heads < n_dense_heads:
            att_out = layer.attention.output.dense
            gram = _Gram(att_out.in_features)
            _run_layer(layer, batches, gram, att_out)
            per_channel = gram.value.diagonal()[:-1].float().clamp_min(0)
            w = att_out.weight.pow(2).sum(0).reshape(-1, head_size).sum(1).sqrt()
            kept = sorted(torch.topk(per_channel.reshape(-1, head_size).sum(1).sqrt() * w, n_heads).indices.tolist())
            refit = (reconstruct_linear(att_out.weight, att_out.bias, gram.value, head_columns(kept, head_size))
                     if reconstruct else None)
            remove_encoder_heads(layer, kept, head_size)
            if refit is not None:
                layer.attention.output.dense = _replace(layer.attention.output.dense, *refit)
            removed_heads[f"{path}.{i}.attention.self"] = [h for h in range(n_dense_heads) if h not in kept]
        kept_widths[f"{path}.{i}.attention.self"] = (n_heads, n_dense_heads)
        kept_widths[f"{path}.{i}.intermediate"] = (n_ffn, n_dense_ffn)

        up_path, down_path = ffn_paths(layer)
        ffn_out = layer.get_submodule(down_path)
        gram = _Gram(ffn_out.in_features)
        _run_layer(layer, batches, gram, ffn_out)
        score = gram.value.diagonal()[:-1].float().clamp_min(0).sqrt() * ffn_out.weight.norm(dim=0)
        keep = torch.topk(score, n_ffn).indices.sort().values
        set_module(layer, up_path, shrink_linear(layer.get_submodule(up_path), out_idx=keep))
        if reconstruct:
            set_module(layer, down_path, _replace(ffn_out, *reconstruct_linear(ffn_out.weight, ffn_out.bias,
                                                                               gram.value, keep)))
        else:
            set_module(layer, down_path, shrink_linear(ffn_out, in_idx=keep))
        _run_layer(layer, batches, advance=True)
    cfg.intermediate_size = n_ffn
    return PruneResult(model, "encoder", kept_widths, removed_blocks=removed_blocks, removed_heads=removed_heads)
