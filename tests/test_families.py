"""Model families through `slimkit compress`: Hugging Face image and text classifiers, each a tiny
random-init model saved with save_pretrained, compressed from the command line, reloaded the way
the family promises (plain from_pretrained), and scored again to the report's numbers; and the
bad inputs a user of these models meets, one line each."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.errors import SlimkitError
from slimkit.families import FAMILIES, check_task, hf_family

pytest.importorskip("transformers")

QUICK = ["--search-steps", "2", "--recover-steps", "2", "--batch-size", "32", "--keep-slower", "--floor", "0"]


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A 3-class ViT over 16x16 RGB images, with an image processor that normalises by 0.5 / 0.5."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=64, num_labels=3)
    folder = tmp_path_factory.mktemp("vit") / "vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Digits 0-2 as 8x8 gray PNGs, one sub-folder per class: resized and given 3 channels on the way in."""
    from PIL import Image

    from slimkit.data import load_digits

    d = load_digits(seed=0)
    root = tmp_path_factory.mktemp("images") / "digits"
    x, y = torch.cat([d.train.x, d.val.x]), torch.cat([d.train.y, d.val.y])
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        rows = (y == c).nonzero().flatten()[:40]
        for i in rows.tolist():
            img = ((x[i, 0] - x[i, 0].min()) / (x[i, 0].max() - x[i, 0].min() + 1e-9) * 255).to(torch.uint8)
            Image.fromarray(img.numpy(), mode="L").save(root / f"class{c}" / f"{i}.png")
    return root


def test_vit_folder_compressed_from_the_cli_reloads_with_from_pretrained(vit_folder, image_dir, tmp_path):
    from transformers import ViTForImageClassification

    from slimkit.distill import evaluate
    from slimkit.families.hf_encoder import image_data

    out = tmp_path / "run"
    res = run_cli("compress", vit_folder, "--data", image_dir, "--out", out, "--target", "macs=1.3x", *QUICK)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "classification" and report["cutter"] == "encoder"
    assert "image folder digits" in report["data"] and "seed 0" in report["data"]
    assert "vit.embeddings" in report["kept_intact"]["modules"] and "classifier" in report["kept_intact"]["modules"]
    plain = ViTForImageClassification.from_pretrained(out / "model", local_files_only=True).eval()
    assert plain.config.intermediate_size < 64 or plain.config.num_hidden_layers < 3  # it was cut
    assert (out / "model" / "preprocessor_config.json").is_file()  # the folder serves as it is
    # the reloaded model scores exactly what the report says on the same validation split
    val = image_data(str(image_dir), plain.config, vit_folder, seed=0).splits["val"]
    assert evaluate(plain, val)["accuracy"] == pytest.approx(report["result"]["val"]["accuracy"])


def test_image_data_follows_the_config_and_the_processor(vit_folder, image_dir):
    from transformers import AutoConfig

    from slimkit.data.images import image_folder
    from slimkit.families.hf_encoder import image_data

    config = AutoConfig.from_pretrained(vit_folder)
    prepared = image_data(str(image_dir), config, vit_folder, seed=0)
    x = prepared.splits["train"].x
    assert x.shape[1:] == (3, 16, 16)  # 8x8 gray in, the config's 3 x 16 x 16 out
    raw = image_folder(image_dir, seed=0).train.x
    assert x.min() < -0.9 and raw.min() >= 0  # normalised by mean 0.5, std 0.5: [0, 1] -> [-1, 1]
    assert torch.equal(x[:, 0], x[:, 1])  # gray repeated


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A 2-class BERT text classifier with a real WordPiece tokenizer (MiniLM's, shipped as a package)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slimkit.llm.load import minilm_dir

    try:
        tok = AutoTokenizer.from_pretrained(minilm_dir())
    except Exception as exc:  # noqa: BLE001 - the package is an install step; say which
        pytest.skip(f"MiniLM's tokenizer is not installed ({exc})")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    folder = tmp_path_factory.mktemp("bert") / "bert"
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_csv(path, n=80, text="sentence", label="novel"):
    subjects = {"emma": "Emma walked to Highbury and spoke of Mr Knightley", "persuasion": "Anne waited at Bath "
                "for a letter from Captain Wentworth"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([text, label])
        for i in range(n):
            name = "emma" if i % 2 else "persuasion"
            w.writerow([f"{subjects[name]} on day {i}.", name])
    return path


def test_text_classifier_from_a_csv_compressed_and_reloaded(bert_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimkit.distill import evaluate
    from slimkit.families.hf_encoder import task_for, text_data

    data = write_csv(tmp_path / "novels.csv")
    out = tmp_path / "run"
    res = run_cli("compress", bert_folder, "--data", data, "--text-column", "sentence", "--label-column", "novel",
                  "--out", out, "--target", "macs=1.3x", *QUICK)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert "fresh processes" in report["timing"] and "Hugging Face folders" in report["timing"]  # dicts too
    assert "classes emma, persuasion" in report["data"] and "carved" in report["data"]
    model = AutoModelForSequenceClassification.from_pretrained(out / "model", local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out / "model")  # the tokenizer travels with the model
    assert model.config.intermediate_size < 64 or model.config.num_hidden_layers < 3
    val = text_data(str(data), tok, model.config, seed=0, text_column="sentence", label_column="novel").splits["val"]
    got = evaluate(model, val, task_for("classification", "text"))["accuracy"]
    assert got == pytest.approx(report["result"]["val"]["accuracy"])


# -- bad inputs: one line each, nothing written ---------------------------------------------------
def test_a_missing_text_column_is_one_line_naming_the_columns(bert_folder, tmp_path):
    data = write_csv(tmp_path / "d.csv", text="body")
    res = run_cli("compress", bert_folder, "--data", data, "--out", tmp_path / "run", *QUICK)
    assert res.exit_code != 0 and "body" in res.output and "--text-column" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_text_classifier_without_data_is_told_what_to_give(bert_folder, tmp_path):
    res = run_cli("compress", bert_folder, "--out", tmp_path / "run", *QUICK)
    assert res.exit_code != 0 and "CSV" in res.output and not (tmp_path / "run").exists()


def test_a_task_that_contradicts_the_config_is_refused(vit_folder, tmp_path):
    res = run_cli("compress", vit_folder, "--task", "ctc", "--out", tmp_path / "run", *QUICK)
    assert res.exit_code != 0 and "contradicts" in res.output and "ViTForImageClassification" in res.output
    with pytest.raises(SlimkitError, match="contradicts"):
        check_task("hf-encoder", "classification", "ctc", "BertForSequenceClassification")
    assert check_task("hf-encoder", "classification", "embeddings", "BertForSequenceClassification") == "embeddings"


def test_an_architecture_no_family_takes_names_the_families(tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"],
                                                    "model_type": "t5"}))
    res = run_cli("compress", folder, "--out", tmp_path / "run", *QUICK)
    assert res.exit_code != 0 and "T5ForConditionalGeneration" in res.output
    assert all(name in res.output for name in FAMILIES)


def test_the_architecture_decides_family_and_task():
    from types import SimpleNamespace as NS

    assert hf_family(NS(architectures=["ViTForImageClassification"], image_size=16)) == \
        ("hf-encoder", "classification", "image")
    assert hf_family(NS(architectures=["BertForSequenceClassification"])) == ("hf-encoder", "classification", "text")
    assert hf_family(NS(architectures=["BertModel"])) == ("hf-encoder", "embeddings", "text")
    assert hf_family(NS(architectures=["LlamaForCausalLM"]))[:2] == ("causal-lm", "causal-lm")
    assert hf_family(NS(architectures=["WhisperForConditionalGeneration"]))[:2] == ("whisper", "speech")


def test_one_reading_of_model_serves_every_verb(vit_folder, tmp_path):
    """model_family reads MODEL from its path or name alone; compress's loader dispatches on the same answer,
    and a local path wins over a built-in name."""
    from slimkit.compression.sources import resolve_model
    from slimkit.families import BUILTINS, model_family

    assert model_family(str(vit_folder)) == "hf-encoder"
    assert {name: model_family(name) for name in BUILTINS} == BUILTINS
    assert model_family("tests.crnn:CRNN") == "modules" and model_family(str(tmp_path / "x.safetensors")) == "modules"
    (tmp_path / "minilm").mkdir()
    with pytest.raises(SlimkitError, match="folder without config.json"):
        model_family(str(tmp_path / "minilm"))  # the user's folder, not the built-in
    with pytest.raises(SlimkitError, match=r"built-in \(smollm2, minilm, whisper-tiny.en\)"):
        model_family("no-such-model")
    minilm = resolve_model("minilm", None)
    assert minilm.family == "hf-encoder" and minilm.extras["task"] == "embeddings"
    assert resolve_model(str(vit_folder), None).extras["task"] == "classification"
