"""Module-specific surgery, keyed by module type: one table entry per kind of module.

Torch-Pruning cuts the layers it knows (Conv, Linear, norms) and couples them through a traced
graph. Every other module with parameters needs an answer to three questions: may its channels be
cut, how, and what must stay consistent afterwards. A `Handler` answers them for one module type,
so supporting a new architecture is one entry in `HANDLERS` (or one `register_handler` call), not
edits in the scorer, the latency table and the head remover.

A handler is one of:
- a *node*: the module is one node of the dependency graph (Torch-Pruning's `customized_pruners`):
  `reads` lists the Linear/RNN layers that read its input channels (cut with them), `writes` the
  Linear layers that write its output channels. An empty `writes` means its outputs are never cut
  through the graph (attention heads are removed whole, RNN hidden units are kept), and every
  channel coupled to them stays.
- *heads*: attention whose heads can be removed whole (q/k/v rows and the output projection's
  columns), with the attributes its forward reads kept consistent (`set_heads`).
- *own parameters*: parameters a module uses outside any layer, with the dimension that follows its
  channels (ConvNeXt's layer scale), cut together with those channels.
- *kept*: the module and every channel coupled to it stay intact, with the reason (`keep`).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.models.vit import Attention


@dataclass(frozen=True)
class Heads:
    """One attention module's heads: q/k/v write `num_heads * head_dim` rows, `out` reads them."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class Handler:
    """How the structured pruner treats one module type (see the module docstring)."""

    reads: Callable[[nn.Module], list[nn.Module]] | None = None
    writes: Callable[[nn.Module], list[nn.Linear]] = lambda m: []
    heads: Callable[[nn.Module, nn.Module | None], Heads] | None = None  # (module, its parent)
    set_heads: Callable[[nn.Module, int], None] | None = None
    params: dict[str, int] = field(default_factory=dict)  # own parameter name -> channel dimension
    keep: str | None = None  # why the module is kept intact (None: it is cut)
    kept_outputs: str | None = None  # why a node's outputs are kept (listed in the result when set)
    # submodules whose output channels an own parameter used outside the traced forward follows
    # (wav2vec2's masked-spectrogram embedding): those outputs stay, so the parameter stays consistent
    keep_with: tuple[str, ...] = ()
    pruner: tp.pruner.BasePruningFunc | None = None  # replaces Torch-Pruning's own pruner for a leaf type

    @property
    def is_node(self) -> bool:
        return self.reads is not None


HANDLERS: dict[type, Handler] = {}
_LAZY_DONE: list[bool] = []


def register_handler(cls: type, handler: Handler) -> None:
    """Teach the pruner one more module type (a subclass inherits its parent's entry)."""
    HANDLERS[cls] = handler


def handler_for(module: nn.Module) -> Handler | None:
    """The entry for the module's type or its nearest registered base class, else `attention_like`."""
    _register_transformers()
    for cls in type(module).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return attention_like(module)


def attention_like(m: nn.Module) -> Handler | None:
    """An entry for attention nobody registered, recognised by the names Hugging Face code uses.

    query/key/value with num_attention_heads and attention_head_size (the output projection in the
    parent's output.dense) is BERT-style; q_proj/k_proj/v_proj with o_proj or out_proj, head_dim and
    a head count is fused. Anything else with q/k/v-like projections is kept whole: cut as plain
    Linear layers, its heads would be split and mixed.
    """
    kids = dict(m.named_children())

    def linear(*names: str) -> bool:
        return all(isinstance(kids.get(n), nn.Linear) for n in names)

    def same(*names: str) -> bool:  # grouped key/value heads have fewer k/v rows than q rows
        return len({kids[n].out_features for n in names}) == 1

    if linear("query", "key", "value") and same("query", "key", "value") \
            and hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size"):
        return split_attention()
    if linear("q_proj", "k_proj", "v_proj") and same("q_proj", "k_proj", "v_proj") and hasattr(m, "head_dim"):
        out = next((n for n in ("o_proj", "out_proj") if linear(n)), None)
        count = next((a for a in ("num_heads", "num_attention_heads") if isinstance(getattr(m, a, None), int)), None)
        if out and count:
            return fused_attention("q_proj", "k_proj", "v_proj", out, count)
    if linear("query", "key", "value") or linear("q_proj", "k_proj", "v_proj") or linear("q", "k", "v"):
        return Handler(keep="attention without a handler (or with grouped key/value heads): cutting its "
                            "projections as plain layers would split heads; register a Handler for it")
    return None


# ----- the generic graph node ------------------------------------------------------------------

def in_width(m: nn.Module, h: Handler) -> int:
    first = h.reads(m)[0]
    return first.input_size if isinstance(first, nn.RNNBase) else first.in_features


def out_width(m: nn.Module, h: Handler) -> int:
    outs = h.writes(m)
    if outs:
        return outs[0].out_features
    if isinstance(m, nn.RNNBase):
        return (m.proj_size or m.hidden_size) * (2 if m.bidirectional else 1)
    if h.heads is not None:
        return int(getattr(m, "all_head_size", h.reads(m)[0].out_features))
    return h.reads(m)[0].out_features


class NodePruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning pruner for a node handler: inputs cut in `reads`, outputs in `writes`."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        for r in self.handler.reads(layer):
            if isinstance(r, nn.RNNBase):  # only the first layer reads the input, in every direction
                keep = sorted(set(range(r.input_size)) - set(idxs))
                for sfx in ("", "_reverse") if r.bidirectional else ("",):
                    name = f"weight_ih_l0{sfx}"
                    setattr(r, name, self._prune_parameter_and_grad(getattr(r, name), keep, 1))
                r.input_size = len(keep)
            else:
                tp.prune_linear_in_channels(r, idxs)
        if hasattr(layer, "embed_dim") and not isinstance(layer, nn.RNNBase):
            layer.embed_dim = in_width(layer, self.handler)  # the residual width it reads
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        outs = self.handler.writes(layer)
        if not outs:
            raise SlimkitError(f"{type(layer).__name__} keeps its output channels; the pruner must not cut them")
        for w in outs:
            tp.prune_linear_out_channels(w, idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return out_width(layer, self.handler)

    def get_in_channels(self, layer: nn.Module) -> int:
        return in_width(layer, self.handler)


# ----- entries -----------------------------------------------------------------------------------

def _set_attrs(m: nn.Module, n: int, head_dim: int, count_attrs: tuple[str, ...], inner_attrs: tuple[str, ...]) -> None:
    for a in count_attrs:
        if hasattr(m, a):
            setattr(m, a, n)
    for a in inner_attrs:
        if hasattr(m, a):
            setattr(m, a, n * head_dim)


def fused_attention(q: str, k: str, v: str, out: str, count: str, head_dim: str = "head_dim") -> Handler:
    """Attention holding q/k/v and its output projection (slimkit's, ViT's, wav2vec2's, BART-style).

    The residual width runs through it (q/k/v inputs, projection outputs); its heads are removed whole.
    """
    def heads(m: nn.Module, parent: nn.Module | None) -> Heads:
        return Heads(getattr(m, q), getattr(m, k), getattr(m, v), getattr(m, out), int(getattr(m, count)),
                     int(getattr(m, head_dim)))

    return Handler(reads=lambda m: [getattr(m, q), getattr(m, k), getattr(m, v)], writes=lambda m: [getattr(m, out)],
                   heads=heads, set_heads=lambda m, n: _set_attrs(m, n, int(getattr(m, head_dim)), (count,), ()))


def split_attention(out_path: str = "output.dense") -> Handler:
    """BERT-style self-attention: q/k/v here, the output projection in the parent at `out_path`.

    Its outputs are the concatenated heads, so they are cut only by removing whole heads;
    `num_attention_heads` and `all_head_size` follow.
    """
    def heads(m: nn.Module, parent: nn.Module | None) -> Heads:
        if parent is None:
            raise SlimkitError(f"{type(m).__name__} needs its parent module to find {out_path}")
        return Heads(m.query, m.key, m.value, parent.get_submodule(out_path), int(m.num_attention_heads),
                     int(m.attention_head_size))

    return Handler(reads=lambda m: [m.query, m.key, m.value], heads=heads,
                   set_heads=lambda m, n: _set_attrs(m, n, int(m.attention_head_size), ("num_attention_heads",),
                                                     ("all_head_size",)))


class PerChannelGroupNormPruner(tp.pruner.function.GroupNormPruner):
    """GroupNorm with one channel per group (instance-norm style) stays so: num_groups follows the cut."""

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: list[int]) -> nn.Module:
        per_channel = layer.num_groups == layer.num_channels
        super().prune_out_channels(layer, idxs)
        if per_channel:
            layer.num_groups = layer.num_channels
        return layer

    prune_in_channels = prune_out_channels


RNN_KEPT = ("hidden units kept: no correct pruner exists for the gates of multi-layer or bidirectional "
            "recurrent layers (Torch-Pruning's LSTM pruner handles one layer and cuts the 4-gate biases "
            "with unexpanded indices); its input columns follow the channels feeding it")
RECURRENT = Handler(reads=lambda m: [m], kept_outputs=RNN_KEPT)

register_handler(Attention, fused_attention("q", "k", "v", "proj", "num_heads"))
for _rnn in (nn.LSTM, nn.GRU, nn.RNN):
    register_handler(_rnn, RECURRENT)
register_handler(nn.GroupNorm, Handler(pruner=PerChannelGroupNormPruner()))
register_handler(nn.Embedding, Handler(keep="embedding tables set the hidden width of everything after them; "
                                            "cutting it is not removing unused channels"))
register_handler(nn.MultiheadAttention, Handler(
    keep="Torch-Pruning's MultiheadAttention pruner narrows every head by cutting q/k/v rows at residual "
         "channel indices, which moves rows between heads: a reshaping, not a removal"))
register_handler(nn.EmbeddingBag, Handler(keep="embedding tables are kept"))


def _register_transformers() -> None:
    """Entries for Hugging Face classes, added on first use when transformers is installed."""
    if _LAZY_DONE:
        return
    _LAZY_DONE.append(True)
    try:
        from transformers.models.bert.modeling_bert import BertSelfAttention
        from transformers.models.convnext.modeling_convnext import ConvNextLayer
        from transformers.models.vit import modeling_vit as vit
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            Wav2Vec2Attention,
            Wav2Vec2Model,
        )
    except ImportError:
        return
    register_handler(BertSelfAttention, split_attention())
    if hasattr(vit, "ViTSelfAttention"):  # transformers 4: BERT-style query/key/value, output.dense in the parent
        register_handler(vit.ViTSelfAttention, split_attention())
    else:  # transformers 5: q/k/v and o_proj in one module
        register_handler(vit.ViTAttention, fused_attention("q_proj", "k_proj", "v_proj", "o_proj",
                                                           "num_attention_heads"))
    register_handler(Wav2Vec2Attention, fused_attention("q_proj", "k_proj", "v_proj", "out_proj", "num_heads"))
    register_handler(ConvNextLayer, Handler(params={"layer_scale_parameter": 0}))
    register_handler(vit.ViTEmbeddings, Handler(keep="the class token and position embeddings set the hidden width"))
    register_handler(Wav2Vec2Model, Handler(keep_with=("feature_projection.projection",)))
