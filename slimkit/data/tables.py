"""Labelled texts from the files users already have, their class ids, and the splits they lack.

Text classifiers are trained on tables of (text, label) rows that arrive as CSV/TSV, JSON Lines,
Parquet or a folder saved by Hugging Face `datasets`. Each reader returns the splits the data
already has, so a shipped test split is never re-drawn; `carve` draws only the missing ones, from a
seed, and says in one sentence what it did so the report can state where every split came from.
pyarrow and `datasets` are imported only when such a file is read: CSV and JSON need neither.
"""

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from slimkit.errors import SlimkitError, check_count

MIN_ROWS = 10
FORMATS = ".csv, .tsv, .jsonl or .json (one object per line), .parquet, or a folder saved by datasets' save_to_disk"
# Split names of a saved DatasetDict -> the names slimkit uses.
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "dev": "val", "test": "test"}
# One split's column names and a function that returns one column's cells as a list.
_Raw = tuple[list[str], Callable[[str], list]]


def _listing(names, limit: int = 20) -> str:
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_table(path, text_column: str = "text", label_column: str = "label") -> dict[str, tuple[list[str], list]]:
    """{split: (texts, labels)} for the splits the data has; a single file gives only "train".

    Labels are returned as stored (ints, or strings from CSV); `label_ids` turns them into class ids.
    Every error is one line that names the file and what to pass or fix, since the CLI prints it as is.
    """
    path = Path(path)
    if not path.exists():
        raise SlimkitError(f"{path} does not exist; pass a {FORMATS}")
    if path.is_dir():
        raw = _read_saved_dataset(path)
    else:
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise SlimkitError(f"{path}: cannot read '{path.suffix or path.name}' files; slimkit reads {FORMATS}")
        raw = {"train": reader(path)}
    if "train" not in raw:
        raise SlimkitError(f"{path} has splits {_listing(raw)} but no train split to learn from")
    out = {}
    for split, (columns, column) in raw.items():
        where = f"{path}" if len(raw) == 1 else f"{path} (split {split})"
        missing = [f"no column '{c}' (pass {opt} NAME to use another)"
                   for c, opt in ((text_column, "--text-column"), (label_column, "--label-column")) if c not in columns]
        if missing:
            raise SlimkitError(f"{where} has {' and '.join(missing)}; its columns are {_listing(columns)}")
        texts, labels = column(text_column), column(label_column)
        for row, (t, y) in enumerate(zip(texts, labels), start=1):
            if not isinstance(t, str) or not t.strip():
                raise SlimkitError(f"{where}: row {row} (the first data row is 1) has no text in column "
                                   f"'{text_column}' (got {t!r}); fill it in or drop the row")
            if y is None or (isinstance(y, str) and not y.strip()) or (isinstance(y, float) and math.isnan(y)):
                raise SlimkitError(f"{where}: row {row} (the first data row is 1) has no label in column "
                                   f"'{label_column}'; label it or drop the row")
        out[split] = (texts, labels)
    if len(out["train"][0]) < MIN_ROWS:
        raise SlimkitError(f"{path} has {len(out['train'][0])} training rows; slimkit needs at least {MIN_ROWS} "
                           f"labelled texts to train and to carve val/test from")
    for split, (texts, _) in out.items():
        if not texts:
            raise SlimkitError(f"{path}: split {split} is empty; drop it or add rows")
    return out


def _read_delimited(path: Path) -> _Raw:
    """CSV or TSV with a header row; utf-8-sig drops the byte-order mark that spreadsheets write."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            try:
                rows = list(reader)
            except csv.Error as exc:
                raise SlimkitError(f"{path} line {reader.line_num} is not valid CSV: {exc}") from None
            if reader.fieldnames is None:
                raise SlimkitError(f"{path} is empty; it needs a header row naming the columns, then one row per text")
            columns = list(reader.fieldnames)
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimkitError(f"cannot read {path} as UTF-8 text: {exc}") from None
    return columns, lambda c: [row.get(c) for row in rows]


def _read_json_lines(path: Path) -> _Raw:
    """One JSON object per line; a file that is one JSON array of objects is read too."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimkitError(f"cannot read {path} as UTF-8 text: {exc}") from None
    array = text.lstrip().startswith("[")
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines breaks at
    lines = [(1, text)] if array else [(n, ln) for n, ln in enumerate(text.split("\n"), start=1) if ln.strip()]
    rows = []
    for n, line in lines:
        try:
            rows.extend(json.loads(line) if array else [json.loads(line)])
        except json.JSONDecodeError as exc:
            raise SlimkitError(f"{path} line {n + exc.lineno - 1} is not JSON ({exc.msg}); "
                               f"write one object per line") from None
    bad = next((i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise SlimkitError(f'{path}: row {bad} is not an object like {{"text": "...", "label": ...}}')
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return columns, lambda c: [row.get(c) for row in rows]


def _read_parquet(path: Path) -> _Raw:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SlimkitError(f"reading {path} needs pyarrow: pip install pyarrow "
                           f"(or pip install 'slimkit[data]')") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise SlimkitError(f"cannot read {path} as Parquet: {exc}") from None
    return list(table.column_names), lambda c: table.column(c).to_pylist()


def _read_saved_dataset(path: Path) -> dict[str, _Raw]:
    """A Dataset or DatasetDict written by `save_to_disk`, its split names mapped to train/val/test."""
    is_dict = (path / "dataset_dict.json").exists()
    if not is_dict and not ((path / "state.json").exists() and (path / "dataset_info.json").exists()):
        raise SlimkitError(f"{path} is a folder but not one saved by datasets' save_to_disk (it has no "
                           f"dataset_dict.json, nor state.json and dataset_info.json); slimkit reads {FORMATS}")
    try:
        import datasets
    except ImportError:
        raise SlimkitError(f"reading {path} needs Hugging Face datasets: pip install datasets "
                           f"(or pip install 'slimkit[data]')") from None
    try:
        loaded = (datasets.DatasetDict if is_dict else datasets.Dataset).load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"cannot load {path} with datasets' load_from_disk: {exc}") from None
    if not is_dict:
        return {"train": _dataset_columns(loaded)}
    unknown = [s for s in loaded if s not in SPLIT_NAMES]
    if unknown:
        raise SlimkitError(f"{path} has split(s) {_listing(unknown)} that slimkit does not know; it reads train, "
                           f"validation (or valid, dev) and test; save without the others")
    out: dict[str, _Raw] = {}
    for name, ds in loaded.items():
        ours = SPLIT_NAMES[name]
        if ours in out:
            raise SlimkitError(f"{path} has more than one validation split (validation, valid, dev); keep one")
        out[ours] = _dataset_columns(ds)
    return out


def _dataset_columns(ds) -> _Raw:
    """Columns through the Arrow format: one call per column, not one Python object per row."""
    return list(ds.column_names), lambda c: ds.with_format("arrow")[c].to_pylist()


_READERS = {".csv": _read_delimited, ".tsv": _read_delimited, ".jsonl": _read_json_lines,
            ".json": _read_json_lines, ".parquet": _read_parquet}


def _as_int(label) -> int | None:
    if isinstance(label, int):
        return label
    if isinstance(label, float) and label.is_integer():
        return int(label)
    if isinstance(label, str) and re.fullmatch(r"\s*\d+\s*", label):
        return int(label)
    return None


def label_ids(labels: list, label2id: dict[str, int] | None = None,
              num_labels: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Class ids (int64) for `labels` and the class names in id order.

    Integer labels are already ids. Names go through `label2id` when it covers them all, so a fine-tuned
    model keeps its own classes; a label2id of placeholder names (LABEL_0, LABEL_1, ...) says nothing
    about the classes, so then the sorted names get ids 0..C-1, the same on every run of the same data.
    """
    if not labels:
        raise SlimkitError("there are no labels to map to class ids")
    if num_labels is not None:
        check_count(num_labels, "num_labels")
    labels = [str(y) if isinstance(y, bool) else y for y in labels]
    id2label = {v: k for k, v in (label2id or {}).items()}
    ints = [_as_int(y) for y in labels]
    if all(i is not None for i in ints):
        top = num_labels if num_labels is not None else max(max(ints) + 1, len(id2label))
        for row, i in enumerate(ints, start=1):
            if not 0 <= i < top:
                raise SlimkitError(f"label {labels[row - 1]!r} (row {row}) is not a class id in 0..{top - 1}; "
                                   f"integer labels must count classes from 0")
        return torch.tensor(ints, dtype=torch.int64), [str(id2label.get(i, i)) for i in range(top)]
    if any(not isinstance(y, str) for y in labels):
        kinds = ", ".join(sorted({type(y).__name__ for y in labels}))
        raise SlimkitError(f"labels mix kinds ({kinds}); use only class names or only integer ids")
    if label2id and all(y in label2id for y in labels):
        ids = list(label2id.values())
        if not all(type(i) is int for i in ids) or sorted(ids) != list(range(len(ids))):
            raise SlimkitError(f"label2id must give the ids 0..{len(ids) - 1} once each, got {label2id}")
        names = [id2label[i] for i in range(len(ids))]
    elif label2id and not all(re.fullmatch(r"LABEL_\d+", str(k)) for k in label2id):
        unknown = next(y for y in labels if y not in label2id)
        known = _listing(sorted(label2id, key=str))
        raise SlimkitError(f"label {unknown!r} is not one of the model's labels ({known}); rename the labels "
                           f"to match, or start from a model without its own label names")
    else:
        names = sorted(set(labels))
    if num_labels is not None and len(names) > num_labels:
        raise SlimkitError(f"the data has {len(names)} classes ({_listing(names)}) "
                           f"but the model has {num_labels} outputs")
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[y] for y in labels], dtype=torch.int64), names


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def carve(n: int, seed: int, have: set[str], val_fraction: float = 0.1,
          test_fraction: float = 0.1) -> tuple[dict[str, torch.Tensor], str]:
    """Row indices of the training data for the splits it lacks, and one sentence saying so.

    Only splits missing from `have` are drawn, from one seeded permutation of the n training rows, so a
    split the data ships with is never replaced and the same seed gives the same rows. When anything
    is carved the result also holds "train": the rows left over, which are what training may use.
    Each index tensor is sorted, so the rows keep the file's order.
    """
    check_count(n, "n")
    unknown = set(have) - {"train", "val", "test"}
    if unknown:
        raise SlimkitError(f"unknown split name(s) {_listing(sorted(unknown))}; splits are train, val and test")
    wanted = [(s, f) for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in have]
    if not wanted:
        return {}, f"val and test come with the data; all {n} training rows are train"
    sizes = {}
    for split, fraction in wanted:
        if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise SlimkitError(f"the {split} fraction must be in [0, 1), got {fraction!r}")
        sizes[split] = int(n * fraction + 0.5)
        if sizes[split] == 0:
            raise SlimkitError(f"{_percent(fraction)} of {n} training rows leaves the {split} split empty; "
                               f"raise the {split} fraction or add rows")
    if n - sum(sizes.values()) <= 0:
        raise SlimkitError(f"carving {' and '.join(f'{s} ({_percent(f)})' for s, f in wanted)} from {n} training "
                           f"rows leaves no rows to train on; lower the fractions")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for split, size in sizes.items():
        out[split] = perm[start:start + size].sort().values
        start += size
    out["train"] = perm[start:].sort().values
    what = " and ".join(sizes)
    shares = " / ".join(_percent(f) for _, f in wanted)
    return out, f"{what} carved from the {n} training rows ({shares}, seed {seed}); train is the rest"
