"""The Hugging Face encoder family: BERT- and ViT-style models as text or image classifiers, or as
sentence encoders.

- Loading: a `save_pretrained` folder; its config's `architectures` says the task
  (`*ForSequenceClassification`: text classification, `*ForImageClassification`: image
  classification, a bare encoder: embeddings), and `--task` may only agree with it.
- Cuts (`EncoderCutter`): FFN neurons by activation-aware importance with least-squares
  reconstruction of the FFN output (slimkit.llm.encoder_prune), the same count in every layer, and
  whole layers from the top. Both are widths the config can state (`intermediate_size`,
  `num_hidden_layers`), so the result reloads with plain `from_pretrained`. Heads are not cut by
  compress: BERT and ViT derive the head size from hidden_size / num_attention_heads, so a cut
  head count would need slimkit's loader.
- Data: images from an image folder or a built-in set, resized and given the channels the config
  asks for; texts from a table (slimkit.data.tables) tokenized by the folder's tokenizer; sentences
  for embeddings. Splits the data does not have are carved with the seed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.families import check_task, describe, hf_family
from slimkit.families.base import Prepared, Source

MAX_TOKENS = 128  # longest text a classifier's batch keeps (tokens); longer rows are truncated


@dataclass
class EncoderCutter:
    """Cuts a BERT- or ViT-style encoder (alone or under a classification head): FFN neurons and the
    last layers. Calibration is `tokenizer` + `texts` when given (sentence encoders), else the
    calibration batches compress passes, as the model takes them."""

    tokenizer: Any = None
    texts: list[str] = field(default_factory=list)
    name: str = "encoder"

    def blocks(self, model: nn.Module) -> list[str]:
        from slimkit.llm.encoder_prune import encoder_layers

        layers, path = encoder_layers(model)
        return [f"{path}.{i}" for i in range(len(layers))][1:]

    def influences(self, model: nn.Module, calib: list[Any]) -> dict[str, float]:
        """Later layers first: layers are dropped from the top, so the rank follows depth."""
        names = self.blocks(model)
        return {n: float(i + 1) / len(names) for i, n in enumerate(reversed(names))}

    def intact(self, model: nn.Module) -> dict[str, dict[str, str]]:
        from slimkit.llm.encoder_prune import encoder_layers

        _, path = encoder_layers(model)
        why = "the encoder cutter removes FFN neurons and whole layers only"
        base = path.removesuffix("encoder.layer").removesuffix("layers")
        kept = {f"{base}embeddings": why, f"{path}.*.attention": why}
        top = path.split(".")[0]
        kept.update({n: "the task head keeps its width (the classes)" for n, _ in model.named_children() if n != top})
        return {"modules": kept, "groups": {}}

    def remove(self, model: nn.Module, names: list[str]) -> nn.Module:
        from slimkit.llm.encoder_prune import encoder_layers, set_encoder_layers

        m = copy.deepcopy(model)
        layers, _ = encoder_layers(m)
        drop = {int(n.rsplit(".", 1)[1]) for n in names}
        set_encoder_layers(m, nn.ModuleList([lay for i, lay in enumerate(layers) if i not in drop]))
        return m

    def cut(self, model: nn.Module, ratio: float, calib: list[Any],
            exact: bool = True) -> tuple[nn.Module, dict[str, list[int]]]:
        from slimkit.llm.encoder_prune import encoder_layers, ffn_paths, prune_encoder, set_module
        from slimkit.prune.slicing import shrink_linear

        m = copy.deepcopy(model)
        before = m.config.intermediate_size
        if ratio > 0 and exact:
            if self.texts:
                prune_encoder(m, self.tokenizer, self.texts, ffn_ratio=ratio, head_ratio=0.0)
            else:
                prune_encoder(m, ffn_ratio=ratio, head_ratio=0.0, inputs=list(calib))
        elif ratio > 0:  # shapes only: the first neurons, no calibration
            keep = torch.arange(before - int(before * ratio))
            for layer in encoder_layers(m)[0]:
                up, down = ffn_paths(layer)
                set_module(layer, up, shrink_linear(layer.get_submodule(up), out_idx=keep))
                set_module(layer, down, shrink_linear(layer.get_submodule(down), in_idx=keep))
            m.config.intermediate_size = len(keep)
        layers, path = encoder_layers(m)
        return m.eval(), {f"{path}.{i}.intermediate": [m.config.intermediate_size, before] for i in range(len(layers))}


def is_encoder(model: nn.Module) -> bool:
    """A Hugging Face model whose encoder `EncoderCutter` can cut."""
    from slimkit.io.hf_folder import is_hf

    if not is_hf(model) or not hasattr(model.config, "intermediate_size"):
        return False
    from slimkit.llm.encoder_prune import encoder_layers

    try:
        encoder_layers(model)
    except SlimkitError:
        return False
    return True


# -- tasks ---------------------------------------------------------------------------------------
def text_split(batch: Any) -> tuple[dict, Any]:
    """A token batch cut to its longest real row (as tokenizer padding per batch would give), and its labels."""
    from slimkit.distill.tasks import trim_padding

    inputs, _ = trim_padding(batch)
    return inputs, batch.get("labels")


def task_for(name: str, modality: str):
    """The engine task for a family task name: classification (texts: padding trimmed per batch) or embeddings."""
    from slimkit.distill import classification, embeddings

    if name == "embeddings":
        return embeddings()
    task = classification()
    return replace(task, split=text_split) if modality == "text" else task


# -- loading -------------------------------------------------------------------------------------
def load(folder: str | Path, requested: str | None) -> Source:
    """A Hugging Face folder or the built-in `minilm` -> Source, with its task read from the config
    (see the module docstring)."""
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    from slimkit.io.hf_folder import offline
    from slimkit.llm.load import resolve

    folder = resolve(folder)  # the built-in name -> its installed folder; a path stays itself
    offline()
    transformers_logging.disable_progress_bar()  # a bar per load would bury the one-line errors
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    family, task, modality = hf_family(config)
    arch = (getattr(config, "architectures", None) or [""])[0]
    if family != "hf-encoder":
        raise SlimkitError(f"{folder} holds {arch}, a {family} model: load it with "
                           f"slimkit.families.{family.replace('-', '_')}.load")
    task = check_task(family, task, requested, arch)
    import transformers

    cls = (transformers.AutoModel if task == "embeddings" else transformers.AutoModelForImageClassification
           if modality == "image" else transformers.AutoModelForSequenceClassification)
    model = cls.from_pretrained(folder, local_files_only=True).eval()
    if not is_encoder(model):
        raise SlimkitError(f"{arch or type(model).__name__} has no BERT- or ViT-style encoder layer list with FFN "
                           f"projections, so the hf-encoder family cannot cut it; the families are: {describe()}")
    processor = _processor(folder, modality)
    return Source(model, "huggingface", task=task_for(task, modality), family="hf-encoder", processor=processor,
                  extras={"folder": Path(folder), "task": task, "modality": modality, "config": config})


def _processor(folder: Path, modality: str) -> Any:
    """The tokenizer (texts) or image processor (images, when the folder has one), saved with the result."""
    import transformers

    if modality == "text":
        try:
            return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SlimkitError(f"{folder} has no tokenizer slimkit can load ({str(exc).splitlines()[0]}); save the "
                               f"tokenizer into the folder with tokenizer.save_pretrained") from None
    if (Path(folder) / "preprocessor_config.json").is_file():
        return transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return None


# -- data ----------------------------------------------------------------------------------------
def prepare(source: Source, spec: str | None, seed: int, n_train: int = 0, data_dir: str | None = None,
            text_column: str = "text", label_column: str = "label") -> Prepared:
    """The data for this source's task (see the module docstring); nothing is trained or written."""
    task, modality = source.extras["task"], source.extras["modality"]
    if task == "embeddings":
        tokenizer = source.processor or _processor(source.extras["folder"], "text")
        splits, texts = sentence_data(spec or "sentences", tokenizer, seed, n_train)
        return Prepared(splits, f"sentences of {spec or 'the built-in text'}, split 80/10/10 with seed {seed}", texts)
    if modality == "image":
        return image_data(spec or "fashion-mnist", source.extras["config"], source.extras["folder"], seed, n_train,
                          data_dir)
    if spec is None:
        raise SlimkitError("a text classifier needs --data: a CSV, TSV, JSONL or Parquet file with text and label "
                           "columns, or a folder written by datasets' save_to_disk")
    return text_data(spec, source.processor, source.extras["config"], seed, n_train, text_column, label_column)


def image_data(spec: str, config: Any, folder: Path, seed: int, n_train: int = 0,
               data_dir: str | None = None) -> Prepared:
    """Images shaped as the config asks: resized to `image_size`, gray repeated to 3 channels (or RGB
    averaged to 1), and normalised by the folder's image processor when it has one and the images
    came from an image folder (slimkit's built-ins are already standardised)."""
    from slimkit.data import load_dataset
    from slimkit.data.images import image_folder

    p = Path(spec)
    if p.is_dir():
        ds, how = image_folder(p, seed), f"image folder {p.name}: test 20% and val 10% carved with seed {seed}"
    else:
        ds, how = load_dataset(spec, data_dir, seed=seed), f"built-in {spec}: its test split, val carved with seed {seed}"
    labels = int(getattr(config, "num_labels", 0) or 0)
    if labels and ds.num_classes > labels:
        raise SlimkitError(f"--data {spec} has {ds.num_classes} classes but the model's head has {labels}; give data of "
                           f"the task the model was trained for")
    stats = _normalisation(folder) if p.is_dir() else None
    size, channels = int(config.image_size), int(getattr(config, "num_channels", 3))

    def shape(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1) if channels in (1, 3) else x
            if x.shape[1] != channels:
                raise SlimkitError(f"the model takes {channels}-channel images; --data {spec} has {x.shape[1]}")
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if stats is not None:
            mean, std = (torch.tensor(v[:channels]).view(1, -1, 1, 1) for v in stats)
            x = (x - mean) / std
        return x.contiguous()

    from slimkit.data.arrays import Split

    train = ds.train.subset(n_train) if n_train else ds.train
    splits = {k: Split(shape(s.x), s.y) for k, s in (("train", train), ("val", ds.val), ("test", ds.test))}
    return Prepared(splits, how + (f"; resized to {size}x{size}" if ds.train.x.shape[-1] != size else ""))


def _normalisation(folder: Path) -> tuple[list[float], list[float]] | None:
    """(mean, std) from the folder's preprocessor_config.json when it normalises, else None."""
    f = Path(folder) / "preprocessor_config.json"
    if not f.is_file():
        return None
    cfg = json.loads(f.read_text())
    if not cfg.get("do_normalize", True) or "image_mean" not in cfg:
        return None
    mean, std = cfg["image_mean"], cfg["image_std"]
    return ([mean] * 3 if isinstance(mean, (int, float)) else list(mean),
            [std] * 3 if isinstance(std, (int, float)) else list(std))


def text_data(spec: str, tokenizer: Any, config: Any, seed: int, n_train: int = 0, text_column: str = "text",
              label_column: str = "label") -> Prepared:
    """Labelled texts from a table, labels through the config's label2id, tokenized and padded to
    each split's longest row (at most MAX_TOKENS); splits the data lacks are carved with the seed."""
    from slimkit.data.tables import carve, label_ids, read_table

    given = read_table(spec, text_column, label_column)
    names = [k for k in ("train", "val", "test") if k in given]
    texts = {k: given[k][0] for k in names}
    ids, classes = label_ids([lab for k in names for lab in given[k][1]], getattr(config, "label2id", None),
                             getattr(config, "num_labels", None))
    labels, at = {}, 0
    for k in names:
        labels[k], at = ids[at:at + len(texts[k])], at + len(texts[k])
    pieces, how = carve(len(texts["train"]), seed, set(names) - {"train"})
    train_texts, train_labels = texts["train"], labels["train"]
    for k, idx in pieces.items():
        texts[k], labels[k] = [train_texts[i] for i in idx.tolist()], train_labels[idx]
    if n_train:
        texts["train"], labels["train"] = texts["train"][:n_train], labels["train"][:n_train]
    splits = {k: {**_tokens(tokenizer, texts[k]), "labels": labels[k]} for k in ("train", "val", "test")}
    return Prepared(splits, f"{Path(spec).name}: columns {text_column!r} / {label_column!r}, classes "
                            f"{', '.join(map(str, classes))}; {how}", texts["train"])


def _tokens(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def sentence_data(spec: str, tokenizer, seed: int = 0, n: int = 0) -> tuple[dict, list[str]]:
    """Token batches for the embeddings task from a text file (or 'sentences', slimkit's built-in
    public-domain text), split 80/10/10; returns the splits and the training sentences."""
    from slimkit.data.text import encode_sentences, sentences

    if spec == "sentences":
        from slimkit.llm.encoder import DEFAULT_TRAIN_SENTENCES, default_sentences

        # n above the default: more of the training book, the default's sentences first
        train, held = default_sentences(n_train=max(n, DEFAULT_TRAIN_SENTENCES), seed=seed)
        texts = train + held
    else:
        p = Path(spec)
        if not p.is_file():
            raise SlimkitError(f"--data {spec} is not a file; give a UTF-8 text file of sentences or 'sentences'")
        texts = sentences(p.read_text(encoding="utf-8"))
    texts = texts[:n] if n else texts
    if len(texts) < 10:
        raise SlimkitError(f"--data {spec} gives {len(texts)} sentences; give at least 10")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g).tolist()
    k1, k2 = int(len(texts) * 0.8), int(len(texts) * 0.9)
    split = {"train": [texts[i] for i in order[:k1]], "val": [texts[i] for i in order[k1:k2]],
             "test": [texts[i] for i in order[k2:]]}
    return {k: encode_sentences(tokenizer, v) for k, v in split.items()}, split["train"]
