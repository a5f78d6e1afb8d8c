"""slimkit.data.tables: every format reads the same rows, errors say what to fix, ids and carved splits."""

import csv
import json
import sys

import pytest
import torch

from slimkit.data.tables import carve, label_ids, read_table
from slimkit.errors import SlimkitError

# Texts with the characters each format must carry through: a comma, quotes, a non-ASCII letter.
TEXTS = [f'review {i}, "quoted" and café' for i in range(12)]
LABELS = ["pos", "neg", "neutral"] * 4


def _write_csv(path, texts, labels, delimiter=",", header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(zip(texts, labels))
    return path


def _write_jsonl(path, texts, labels):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)),
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["data.csv", "data.tsv", "data.jsonl", "data.json"])
def test_text_formats_read_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if name.endswith("sv"):
        _write_csv(path, TEXTS, LABELS, delimiter="\t" if name.endswith(".tsv") else ",")
    else:
        _write_jsonl(path, TEXTS, LABELS)
    assert read_table(path) == {"train": (TEXTS, LABELS)}


def test_a_tsv_is_split_at_tabs_not_commas(tmp_path):
    path = _write_csv(tmp_path / "data.tsv", TEXTS, LABELS, delimiter="\t")
    texts, _ = read_table(path)["train"]
    assert texts[0] == TEXTS[0] and "," in texts[0]


def test_jsonl_keeps_integer_labels_and_other_column_names(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"sentence": t, "y": i % 2}) for i, t in enumerate(TEXTS)) + "\n\n")
    assert read_table(path, text_column="sentence", label_column="y") == {"train": (TEXTS, [i % 2 for i in range(12)])}


def test_parquet_reads_the_same_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": TEXTS, "label": LABELS, "extra": list(range(12))}), path)
    assert read_table(path) == {"train": (TEXTS, LABELS)}


def test_saved_dataset_reads_the_same_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS}).save_to_disk(str(tmp_path / "ds"))
    assert read_table(tmp_path / "ds") == {"train": (TEXTS, LABELS)}


def test_saved_dataset_dict_maps_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    parts = {"train": (TEXTS, LABELS), "validation": (TEXTS[:3], LABELS[:3]), "test": (TEXTS[3:5], LABELS[3:5])}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": t, "label": y}) for name, (t, y) in parts.items()}
                         ).save_to_disk(str(tmp_path / "dd"))
    assert read_table(tmp_path / "dd") == {"train": parts["train"], "val": parts["validation"], "test": parts["test"]}


def test_saved_dataset_dict_refuses_unknown_split_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    datasets.DatasetDict({"train": ds, "unsupervised": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SlimkitError, match="'unsupervised'"):
        read_table(tmp_path / "dd")


@pytest.mark.parametrize("module, suffix, hint", [("pyarrow", ".parquet", "pip install pyarrow"),
                                                  ("datasets", "", "pip install datasets")])
def test_a_missing_package_is_one_line_with_the_install_command(tmp_path, monkeypatch, module, suffix, hint):
    path = tmp_path / f"data{suffix}"
    if suffix:
        path.write_bytes(b"PAR1")
    else:
        path.mkdir()
        (path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(SlimkitError, match=hint) as err:
        read_table(path)
    assert "\n" not in str(err.value)


def test_a_missing_column_names_the_file_its_columns_and_the_option(tmp_path):
    path = _write_csv(tmp_path / "data.csv", TEXTS, LABELS, header=("sentence", "label"))
    with pytest.raises(SlimkitError) as err:
        read_table(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "'text'" in msg and "'sentence', 'label'" in msg and "--text-column" in msg
    assert "--label-column" not in msg
    with pytest.raises(SlimkitError, match="no column 'y' \\(pass --label-column"):
        read_table(path, text_column="sentence", label_column="y")


def test_an_empty_text_or_label_names_the_first_bad_row(tmp_path):
    texts, labels = list(TEXTS), list(LABELS)
    texts[6], labels[3] = "  ", ""
    with pytest.raises(SlimkitError, match=r"row 4 .*no label"):
        read_table(_write_csv(tmp_path / "data.csv", texts, labels))
    labels[3] = "pos"
    with pytest.raises(SlimkitError, match=r"row 7 .*no text"):
        read_table(_write_csv(tmp_path / "data.csv", texts, labels))
    rows = [{"text": t, "label": y} for t, y in zip(TEXTS, LABELS)]
    del rows[2]["label"]
    (tmp_path / "data.jsonl").write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(SlimkitError, match=r"row 3 .*no label"):
        read_table(tmp_path / "data.jsonl")


def test_fewer_than_ten_rows_is_an_error(tmp_path):
    with pytest.raises(SlimkitError, match="9 training rows.*at least 10"):
        read_table(_write_csv(tmp_path / "data.csv", TEXTS[:9], LABELS[:9]))
    assert len(read_table(_write_csv(tmp_path / "data.csv", TEXTS[:10], LABELS[:10]))["train"][0]) == 10


def test_an_unknown_format_lists_the_ones_it_reads(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(SlimkitError, match=r"'\.xlsx'.*\.csv, \.tsv, \.jsonl.*\.parquet.*save_to_disk"):
        read_table(tmp_path / "data.xlsx")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SlimkitError, match="not one saved by datasets"):
        read_table(tmp_path / "folder")


def test_labels_go_through_a_models_label2id():
    ids, names = label_ids(["pos", "neg", "pos"], label2id={"neg": 1, "pos": 0})
    assert ids.dtype == torch.int64 and ids.tolist() == [0, 1, 0] and names == ["pos", "neg"]


def test_labels_not_in_a_real_label2id_name_the_unknown_and_the_known():
    with pytest.raises(SlimkitError, match=r"'neutral'.*'neg', 'pos'"):
        label_ids(["pos", "neutral"], label2id={"neg": 1, "pos": 0})


def test_names_get_sorted_ids_when_label2id_is_the_default_kind():
    for label2id in (None, {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}):
        ids, names = label_ids(LABELS[:4], label2id=label2id, num_labels=3)
        assert names == ["neg", "neutral", "pos"] and ids.tolist() == [2, 0, 1, 2]
    with pytest.raises(SlimkitError, match="3 classes.*2 outputs"):
        label_ids(LABELS, num_labels=2)


def test_integer_labels_are_ids():
    ids, names = label_ids([2, 0, 1, 0])
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 0, 1, 0] and names == ["0", "1", "2"]
    ids, names = label_ids(["1", "0", "1"], label2id={"neg": 0, "pos": 1})  # CSV cells are strings
    assert ids.tolist() == [1, 0, 1] and names == ["neg", "pos"]
    assert label_ids([0, 1], num_labels=4)[1] == ["0", "1", "2", "3"]


def test_integer_labels_out_of_range_are_an_error():
    with pytest.raises(SlimkitError, match=r"label 3 \(row 2\).*0\.\.2"):
        label_ids([0, 3, 1], num_labels=3)
    with pytest.raises(SlimkitError, match="-1"):
        label_ids([0, -1])


def test_carve_is_deterministic_disjoint_and_covers_every_row():
    idx, text = carve(1000, seed=0, have={"train"})
    again, _ = carve(1000, seed=0, have={"train"})
    other, _ = carve(1000, seed=1, have={"train"})
    assert set(idx) == {"train", "val", "test"}
    assert all(torch.equal(idx[k], again[k]) for k in idx)
    assert not torch.equal(idx["val"], other["val"])
    assert len(idx["val"]) == len(idx["test"]) == 100 and len(idx["train"]) == 800
    assert sorted(torch.cat(list(idx.values())).tolist()) == list(range(1000))
    assert text == "val and test carved from the 1000 training rows (10% / 10%, seed 0); train is the rest"


def test_carve_draws_only_the_missing_splits():
    idx, text = carve(200, seed=3, have={"train", "val"}, test_fraction=0.25)
    assert set(idx) == {"train", "test"} and len(idx["test"]) == 50 and len(idx["train"]) == 150
    assert text.startswith("test carved from the 200 training rows (25%, seed 3)")
    assert carve(200, seed=3, have={"train", "val", "test"})[0] == {}


def test_carve_refuses_an_empty_train_or_an_empty_carved_split():
    with pytest.raises(SlimkitError, match="no rows to train"):
        carve(10, seed=0, have={"train"}, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(SlimkitError, match="val split empty"):
        carve(10, seed=0, have={"train"}, val_fraction=0.01)
