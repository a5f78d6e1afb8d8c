"""The causal-LM family: Llama-style Hugging Face `*ForCausalLM` models through `slimkit compress`.

- Loading: a `save_pretrained` folder whose config names `*ForCausalLM`, or the built-in `smollm2`
  (slimkit.llm.load resolves both), with its tokenizer; `--task` may only agree.
- Data: a plain UTF-8 text file or a built-in text (emma, prideprejudice), tokenized without
  special tokens and cut into non-overlapping windows of `seq_len` tokens; val and test windows are
  carved with the seed (slimkit.data.tables.carve), each at most EVAL_TOKENS tokens (as
  slimkit.data.text.eval_windows). Non-overlapping, so no validation token is also a training token.
- Cuts (`DecoderCutter`): whole decoder layers (block influence, slimkit.llm.depth) and FFN
  neurons (activation-aware, slimkit.llm.width), the same count per layer. Both are widths the
  config states (`num_hidden_layers`, `intermediate_size`), so the result reloads with plain
  `AutoModelForCausalLM.from_pretrained`. Whole KV groups are not cut by compress yet (`slimkit prune
  MODEL --heads` does).
- Timing (`DecodeTimer`): what a user of an LM waits for is decode time per token at batch 1 with
  the KV cache, so that decides; prefill time of the prompt is reported beside it.
- One-shot sparsity (Wanda, SparseGPT, N:M) stays a `slimkit prune` method: zeros in dense matrices are
  multiplied like any other number by dense kernels, so a latency target can never choose it here.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.families import FAMILIES, check_task, hf_family
from slimkit.families.base import Prepared, Source, shared_copy

DEFAULT_TEXT = "emma"
SEQ_LEN = 256
DEFAULT_FLOOR = "ppl<=1.25x"
EVAL_TOKENS = 16384  # most val (and test) tokens: perplexity over a book would cost minutes per mix tried
WIDTH_WINDOWS = 16  # calibration windows per exact FFN cut: each cut is one forward pass over them
SPARSITY_NOTE = ("one-shot sparsity (Wanda, SparseGPT, N:M) is a `slimkit prune --method` method, not a compress cut: "
                 "its zeros stay in dense matrices that dense kernels multiply anyway, so it saves no time and a "
                 "latency target cannot choose it")

# Settings an LM gets unless the user sets them (compress's defaults are sized for small vision nets).
# - batch_size 8 and calib_batches 4: a batch of 128 windows of 256 tokens would hold 128*256*49152
#   fp32 logits (6.4 GB) for SmolLM2; 32 calibration windows are 8k tokens.
# - lr 1e-4 and temperature 1: slimkit.llm.recover's recipe for pretrained LMs (compress's 1e-3 is sized
#   for small nets).
# - max_blocks 8 and five FFN ratios: search.py builds (max_blocks+1) x (1+len(ratios)) models and
#   times them all in one run. A full copy of SmolLM2-135M is ~0.54 GB fp32 (embeddings 113 MB, 30
#   layers of 14.2 MB, of which FFN 10.6 MB), so with compress's defaults (29 removable layers, 7
#   ratios) full copies of every mix would need 30 x 8 x 0.54 = 130 GB, and even with max_blocks 8
#   and 5 ratios 9 x 6 x 0.54 = 29 GB, more than a 24 GB machine. DecoderCutter's copies therefore
#   share every tensor they do not change with the model they come from (a removal costs ~0 bytes; an
#   FFN cut only its new FFN weights, (1-ratio) x 10.6 MB per kept layer): the mixes then hold
#   sum_k=0..8 (30-k) x 10.6 MB x (0.85+0.7+0.55+0.4+0.25) ~ 6.8 GB (measured on SmolLM2: a removal
#   owns 0 MiB, FFN ratio 0.25 on 30 layers 228 MiB, on 22 layers 167 MiB). Each exact FFN cut also
#   costs a forward pass over WIDTH_WINDOWS windows and each mix a decode timing.
# - ratio steps of 0.15: at batch-1 decode SmolLM2's time falls about 4 % per 0.1 of FFN ratio and
#   about 2.7 % per removed layer, so a coarser grid (0.25, 0.5, 0.75) left every depth with only the
#   0.75 cut under latency=0.7x, overshooting to 0.57-0.62x and costing far more perplexity than the
#   target asks (bench/compress_e2e.py's smollm2 row).
LM_SETTINGS = {"batch_size": 8, "calib_batches": 4, "lr": 1e-4, "temperature": 1.0, "max_blocks": 8,
               "ratios": (0.15, 0.3, 0.45, 0.6, 0.75)}


def _windows(calib: list[Any]) -> torch.Tensor:
    """The (n, L) token windows of compress's calibration inputs (dicts with input_ids, as lm_split gives)."""
    ids = [x["input_ids"] if isinstance(x, dict) else x for x in calib]
    if not ids:
        raise SlimkitError("the causal-LM cutter needs calibration windows; the training split gave none")
    return torch.cat(ids)


def _layers_path(model: nn.Module) -> str:
    from slimkit.llm.calibration import decoder_layers

    layers = decoder_layers(model)
    return next(n for n, m in model.named_modules() if m is layers)


@dataclass
class DecoderCutter:
    """Cuts a Llama-style decoder: whole layers (`model.layers.i`) and FFN neurons, uniform per layer."""

    name: str = "decoder"

    def blocks(self, model: nn.Module) -> list[str]:
        """Every layer but the first: one must stay, and the first (which turns embeddings into the
        residual stream) typically has the highest block influence of a Llama-family stack."""
        from slimkit.llm.calibration import decoder_layers

        path = _layers_path(model)
        return [f"{path}.{i}" for i in range(1, len(decoder_layers(model)))]

    def influences(self, model: nn.Module, calib: list[Any]) -> dict[str, float]:
        """Block influence 1 - cos(in, out) per layer over the calibration tokens: higher changes more, keep it."""
        from slimkit.llm.depth import block_influence

        scores = block_influence(model, _windows(calib), progress=False)
        return dict(zip(self.blocks(model), scores[1:]))

    def remove(self, model: nn.Module, names: list[str]) -> nn.Module:
        """A copy without the named layers, the rest renumbered (layer_idx indexes the KV cache)."""
        from slimkit.llm.depth import remove_layers

        m = shared_copy(model)
        remove_layers(m, sorted(int(n.rsplit(".", 1)[1]) for n in names))
        return m.eval()

    def cut(self, model: nn.Module, ratio: float, calib: list[Any],
            exact: bool = True) -> tuple[nn.Module, dict[str, list[int]]]:
        """`ratio` of the FFN neurons of every layer: by activation-aware importance (prune_width), or
        with exact=False the first neurons (shapes only, for cost bisection)."""
        from slimkit.llm.calibration import decoder_layers
        from slimkit.llm.width import prune_width, remove_ffn_neurons

        m = shared_copy(model)
        before = int(m.config.intermediate_size)
        if ratio > 0 and exact:
            prune_width(m, _windows(calib)[:WIDTH_WINDOWS], ffn_ratio=ratio, progress=False)
        elif ratio > 0:
            keep = torch.arange(before - int(before * ratio))
            remove_ffn_neurons(m, [keep] * len(decoder_layers(m)))
        path = _layers_path(m)
        after = int(m.config.intermediate_size)
        return m.eval(), {f"{path}.{i}.mlp": [after, before] for i in range(len(decoder_layers(m)))}

    def intact(self, model: nn.Module) -> dict[str, dict[str, str]]:
        path = _layers_path(model)
        base = path.rsplit(".", 1)[0]
        tied = getattr(model.config, "tie_word_embeddings", False)
        return {"modules": {
            f"{path}.0": "one layer must stay, and the first typically has the highest block influence",
            f"{base}.embed_tokens": "the vocabulary is the tokenizer's: every token id must keep its row",
            "lm_head": "one logit per vocabulary token" + (" (tied to the embeddings)" if tied else ""),
            f"{path}.*.self_attn": "compress cuts layers and FFN neurons only; whole KV groups are `slimkit "
                                   "prune MODEL --heads` (a lone query head cannot go: GQA groups must stay equal)",
        }, "groups": {}}


# -- timing --------------------------------------------------------------------------------------
@dataclass
class DecodeTimer:
    """Decode ms per token at batch 1 with the KV cache, every model timed alike in one run.

    Per round each model (in a rotated order, so none always runs first) prefills the same
    `prompt_len` random tokens and decodes `tokens` fixed tokens one at a time on its cache; the
    fastest round per model counts (noise on a shared machine only ever adds time). A call on few
    models gets more rounds (`min_runs` model-rounds in all): the final dense-vs-result timing is
    the one that decides, and two models are cheap to time 20 times. `beside` holds the last call's
    prefill ms (fastest round) per model, which compress puts in the report."""

    prompt_len: int = 32
    tokens: int = 16
    rounds: int = 5
    min_runs: int = 40
    threads: int = 2
    seed: int = 0
    beside: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return (f"in this process: decode ms per token at batch 1 with the KV cache ({self.tokens} tokens after a "
                f"{self.prompt_len}-token prompt), the models alternated in each of {self.rounds} rounds or more "
                f"({self.min_runs // 2} when two models are compared), fastest round per model, {self.threads} threads; prefill ms of the prompt reported beside (slimkit's "
                f"fresh-process timer times one forward pass, not a decode loop on a cache)")

    @torch.inference_mode()
    def _once(self, model: nn.Module, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
        params = inspect.signature(model.forward).parameters
        keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # as generate() prefills
        name = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.2x renamed it
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **keep)
        t1 = time.perf_counter()
        past = getattr(out, name)
        for i in range(tokens):  # fixed tokens: every model does the same work whatever it predicts
            out = model(input_ids=ids[:, i % ids.shape[1]:][:, :1], use_cache=True, **{name: past})
            past = getattr(out, name)
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(tokens, 1)

    def __call__(self, models: list[nn.Module]) -> list[float]:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            vocab = int(models[0].config.vocab_size)
            ids = torch.randint(0, vocab, (1, self.prompt_len), generator=torch.Generator().manual_seed(self.seed))
            for m in models:
                m.eval()
                self._once(m, ids, 2)  # warm-up
            prefill, decode = [float("inf")] * len(models), [float("inf")] * len(models)
            for r in range(max(self.rounds, -(-self.min_runs // len(models)))):
                for i in [(j + r) % len(models) for j in range(len(models))]:
                    p, d = self._once(models[i], ids, self.tokens)
                    prefill[i], decode[i] = min(prefill[i], p), min(decode[i], d)
        finally:
            torch.set_num_threads(old)
        self.beside = {"prefill_ms": prefill, "prompt_tokens": self.prompt_len, "decode_tokens": self.tokens}
        return decode


def engine_parts(model: nn.Module, example: Any, settings: Any) -> tuple[DecoderCutter | None, DecodeTimer | None]:
    """The cutter and timer compress() uses for a causal_lm task (slimkit.families.engine_parts): decoder
    layers and FFN neurons, timed by decode ms per token, when the model has a decoder layer count."""
    if not hasattr(getattr(model, "config", None), "num_hidden_layers"):
        return None, None
    return DecoderCutter(), DecodeTimer(threads=settings.threads)


# -- loading -------------------------------------------------------------------------------------
def load(name_or_folder: str | Path, requested: str | None) -> Source:
    """A `*ForCausalLM` folder or the built-in `smollm2` -> Source with the tokenizer and the causal_lm task."""
    from slimkit.distill.tasks import causal_lm
    from slimkit.llm.load import load_causal_lm, load_config, resolve

    config = load_config(name_or_folder)
    family, task, _ = hf_family(config)
    arch = (getattr(config, "architectures", None) or [""])[0]
    if family != "causal-lm":
        raise SlimkitError(f"{name_or_folder} holds {arch}, a {family} model; the causal-lm family takes "
                           f"{FAMILIES['causal-lm'].takes}")
    check_task(family, task, requested, arch)
    model, tokenizer = load_causal_lm(name_or_folder)
    return Source(model, "huggingface", task=causal_lm(), family="causal-lm", processor=tokenizer,
                  extras={"folder": resolve(name_or_folder), "task": task, "config": config})


# -- data ----------------------------------------------------------------------------------------
def check_data(spec: str | None) -> None:
    """Refuse, before the model is loaded, --data that is neither a built-in text nor a file."""
    from slimkit.data.text import check_text

    check_text(spec or DEFAULT_TEXT)


def prepare(source: Source, spec: str | None, seed: int, n_train: int = 0, seq_len: int = SEQ_LEN,
            eval_spec: str | None = None) -> Prepared:
    """Non-overlapping windows of `seq_len` tokens of the text; val and test carved with the seed.

    With `eval_spec` (another text: a held-out book), every window of `spec` trains, and val and
    test are carved from the held-out text instead, half each, so the floor is judged on text the
    recovery never saw."""
    from slimkit.data.tables import carve
    from slimkit.data.text import text_windows

    name = spec or DEFAULT_TEXT
    limit = getattr(source.model.config, "max_position_embeddings", None)
    if seq_len < 2 or (limit and seq_len > limit):
        raise SlimkitError(f"--seq-len {seq_len} must be between 2 and the model's {limit} positions")
    windows, n_tokens = text_windows(source.processor, name, seq_len)
    n = len(windows)
    most = max(1, EVAL_TOKENS // seq_len)  # the first of the carved windows: still the seed's draw
    label = Path(name).name if spec else name
    if eval_spec is not None:
        held, held_tokens = text_windows(source.processor, eval_spec, seq_len)
        if n < 1 or len(held) < 2:
            raise SlimkitError(f"--data {name} gives {n} windows and --eval-data {eval_spec} {len(held)} of {seq_len} "
                               f"tokens; compress needs 1 to train on and 2 held out: give longer texts or a "
                               f"smaller --seq-len")
        perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))
        half = len(held) // 2
        train = windows[:n_train] if n_train else windows
        splits = {"train": {"input_ids": train}, "val": {"input_ids": held[perm[:half].sort().values[:most]]},
                  "test": {"input_ids": held[perm[half:].sort().values[:most]]}}
        return Prepared(splits, f"train: {label}, {n_tokens} tokens in {n} non-overlapping windows of {seq_len}"
                                f"{f', the first {len(train)} used' if len(train) < n else ''}; val and test: "
                                f"{Path(eval_spec).name}, {held_tokens} tokens in {len(held)} windows, carved half "
                                f"and half with seed {seed}, each kept to its first {most} windows")
    if n < 5:
        raise SlimkitError(f"--data {name} gives {n_tokens} tokens, {n} windows of {seq_len}; compress needs at "
                           f"least 5 (train, val and test): give a longer text or a smaller --seq-len")
    pieces, how = carve(n, seed, set())
    train = windows[pieces["train"]]
    train = train[:n_train] if n_train else train
    splits = {"train": {"input_ids": train}, "val": {"input_ids": windows[pieces["val"][:most]]},
              "test": {"input_ids": windows[pieces["test"][:most]]}}
    used = f"; the first {len(train)} training windows used" if n_train and n_train < len(pieces["train"]) else ""
    if len(pieces["val"]) > most or len(pieces["test"]) > most:
        used += f"; val and test kept to their first {most} windows ({most * seq_len} tokens each)"
    return Prepared(splits, f"{label}: {n_tokens} tokens in {n} non-overlapping windows "
                            f"of {seq_len}; {how.replace('rows', 'windows')}{used}")
