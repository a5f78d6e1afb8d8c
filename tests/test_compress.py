"""slimkit.compress: targets and floors, the fastest-first choice, refusals, the report, the factory path.

Runs use a tiny ResNet on 8x8 digits, a few KD steps, and (except where the timer itself is the
subject) a timer injected that reports MACs as milliseconds, so no test depends on the clock.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

import slimkit
from slimkit.compression import NotFasterError, parse_floor, parse_target
from slimkit.compression import run as run_mod
from slimkit.compression.cutters import deciding_timer
from slimkit.compression.sources import load_factory
from slimkit.errors import SlimkitError
from slimkit.measure import count_macs
from slimkit.models import ResNetCifar

TINY = {"search_steps": 3, "recover_steps": 3, "batch_size": 64, "calib_batches": 2, "progress": False}


def tiny_resnet():
    torch.manual_seed(0)
    return ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=8)


def macs_timer(example):
    """Milliseconds = MMACs: deterministic, and cheaper models are 'faster'."""
    return lambda models: [count_macs(m, example) / 1e6 for m in models]


@pytest.fixture(scope="module")
def data():
    from slimkit.data import load_digits

    d = load_digits(seed=0)
    return d.train.subset(256), d.val, d.test


# -- targets and floors ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,kind,share", [("latency=0.5x", "latency", 0.5), ("macs=2x", "macs", 0.5),
                                             ("macs=0.25x", "macs", 0.25), ("params=4x", "params", 0.25),
                                             (" MACS = 3 x ", "macs", 1 / 3)])
def test_parse_target(text, kind, share):
    t = parse_target(text)
    assert t.kind == kind and t.share == pytest.approx(share)


@pytest.mark.parametrize("text", ["latency=2x", "speed=2x", "macs=1x", "macs=", "macs=-2x", "latency=0x", "2x"])
def test_parse_target_refuses(text):
    with pytest.raises(SlimkitError, match="latency=0.5x"):
        parse_target(text)


def test_floor_points_follow_the_metric_direction():
    f = parse_floor("-1pt")
    assert f.value({"accuracy": 0.90}, "accuracy", True) == pytest.approx(0.89)
    assert f.value({"cer": 0.10}, "cer", False) == pytest.approx(0.11)  # an error rate may rise by 1 pt
    assert parse_floor("0.95").value({"cosine": 1.0}, "cosine", True) == 0.95
    assert parse_floor(0.5).absolute == 0.5
    rule = parse_floor(lambda dense: dense["accuracy"] - 0.05)
    assert rule.value({"accuracy": 0.9}, "accuracy", True) == pytest.approx(0.85)
    with pytest.raises(SlimkitError, match="finite number"):
        parse_floor(lambda dense: None).value({"accuracy": 0.9}, "accuracy", True)
    for bad in ("-1 points", "one", "nan", "+1pt"):
        with pytest.raises(SlimkitError, match="-1pt"):
            parse_floor(bad)


# -- a full run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    train, val, test = data
    out = tmp_path_factory.mktemp("compress") / "run"
    model = tiny_resnet()
    result = slimkit.compress(model, train, val, test, target="macs=2x", floor=0.0, out=out, seed=3,
                              timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    return model, result, out


def test_every_mix_reaches_the_macs_target_and_the_fastest_holding_one_is_chosen(run):
    _, result, _ = run
    dense_macs = result.report.dense.macs
    assert len(result.candidates) >= 2  # 0 and 1 blocks removed
    assert all(c.macs <= dense_macs / 2 for c in result.candidates)
    times = [c.ms for c in result.candidates]
    assert times == sorted(times)  # fastest first
    assert result.chosen is result.candidates[0]  # floor 0.0: the fastest holds
    assert result.faster and result.report.result.meets_target
    assert count_macs(result.model, torch.zeros(1, 1, 8, 8)) <= dense_macs / 2


def test_round_to_reaches_the_structured_pruner(data):
    """Widths of the compressed model are multiples of round_to (16: none of tiny_resnet's 8-wide cuts survive),
    and the recipe records it."""
    train, val, test = data
    result = slimkit.compress(tiny_resnet(), train, val, test, target="macs=1.5x", floor=0.0, timer=macs_timer(val.x[:1]),
                              timing_method="MMACs", max_blocks=0, round_to=16, keep_slower=True, **TINY)
    widths = [m.out_channels for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths and all(w % 16 == 0 for w in widths)
    assert result.report.settings["round_to"] == 16
    with pytest.raises(SlimkitError, match="round_to"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", round_to=0, **TINY)
    from slimkit.cli.main import app

    res = CliRunner().invoke(app, ["compress", "nothing.safetensors", "--round-to", "0", "--out", "unused"])
    assert res.exit_code == 2 and "--round-to must be an integer >= 1" in res.output


def test_report_files_and_reload(run):
    _, result, out = run
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.html", "candidates.png", "model.safetensors", ".slimkit-run.json"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["timing"] == "MACs as ms (test)" and report["target"] == "macs=2x"
    assert len(report["candidates"]) == len(result.candidates) and report["candidates"][report["chosen"]]["kept"]
    assert report["settings"]["seed"] == 3  # the recipe
    assert (out / "candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(chosen)" in (out / "report.md").read_text()
    from slimkit.io import load_model

    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_model(out / "model.safetensors").eval()(x), result.model.eval()(x), atol=1e-5)


def test_same_seed_same_structure_and_weights(run, data):
    _, first, _ = run
    train, val, test = data
    again = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0, seed=3,
                             timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    assert [c.as_dict() for c in again.candidates] == [c.as_dict() for c in first.candidates]
    for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_existing_foreign_folder_is_refused_before_work(data, tmp_path):
    train, val, test = data
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(SlimkitError, match="not made by slimkit"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", out=tmp_path, timer=macs_timer(val.x[:1]),
                         timing_method="t", **TINY)
    assert (tmp_path / "mine.txt").read_text() == "keep"


# -- the choice, with recovery and scores replaced so the rule alone is tested ----------------------
@pytest.fixture
def scored_by_params(monkeypatch):
    """No training; a model's validation 'accuracy' is its parameter count / 1e5 (lighter = worse)."""
    monkeypatch.setattr(run_mod, "recover", lambda student, *a, **k: student)

    def score(model, data, task, teacher, batch_size):
        return {"accuracy": sum(p.numel() for p in model.parameters()) / 1e5, "macro_f1": 0.0}
    monkeypatch.setattr(run_mod, "_score", score)


def test_first_mix_holding_the_floor_fastest_first(data, scored_by_params):
    train, val, test = data
    probe = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0,
                             timer=macs_timer(val.x[:1]), timing_method="t", **TINY)
    scores = [c.params / 1e5 for c in probe.candidates]  # fastest first
    assert len(scores) >= 2
    best = max(range(len(scores)), key=scores.__getitem__)
    # a floor only the best-scoring mix holds: every faster one is tried and fails, then it is chosen
    result = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=scores[best] - 1e-9,
                              timer=macs_timer(val.x[:1]), timing_method="t", **TINY)
    assert result.candidates.index(result.chosen) == best
    assert all(c.held is False for c in result.candidates[:best])
    assert all(c.val is None for c in result.candidates[best + 1:])  # slower mixes are never recovered
    # a floor above every mix: refused, naming the best one
    with pytest.raises(SlimkitError, match=f"the best of {len(scores)} mixes"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=lambda d: scores[best] + 0.01,
                         timer=macs_timer(val.x[:1]), timing_method="t", **TINY)


def test_when_no_mix_holds_after_the_short_recovery_the_best_scoring_is_recovered_fully(data, monkeypatch):
    """The short recovery ranks mixes; when none holds, the best-scoring one gets the full recovery and is the
    result if it holds then (a language model needs the full recovery to come back), else the run is refused."""
    import copy

    train, val, test = data

    def fake_recover(student, teacher, train, task, s, steps, desc, progress, curve=None):
        out = copy.deepcopy(student)
        out.steps = getattr(student, "steps", 0) + steps
        return out

    def score(model, data, task, teacher, batch_size):  # lighter = worse; a full recovery is worth 1000 points
        full = getattr(model, "steps", 0) > TINY["search_steps"]
        return {"accuracy": sum(p.numel() for p in model.parameters()) / 1e5 + 1000 * full, "macro_f1": 0.0}

    monkeypatch.setattr(run_mod, "recover", fake_recover)
    monkeypatch.setattr(run_mod, "_score", score)
    kw = dict(target="macs=2x", timer=macs_timer(val.x[:1]), timing_method="t")
    between = lambda d: d["accuracy"] - 1e-6  # noqa: E731  above every short-recovered mix, below dense
    result = slimkit.compress(tiny_resnet(), train, val, test, floor=between, **{**TINY, **kw})
    vals = [c.val for c in result.candidates]
    assert None not in vals and not any(c.held for c in result.candidates)  # every mix tried, none held
    assert result.chosen is result.candidates[max(range(len(vals)), key=vals.__getitem__)]
    assert result.model.steps == TINY["search_steps"] + TINY["recover_steps"]  # recovered once, not twice
    assert "after the full recovery" in result.report.choice
    from slimkit.compression import to_markdown
    from slimkit.report_html import page_bytes

    assert f"- chosen: {result.report.choice}" in to_markdown(result.report)  # the pages say it too
    assert result.report.choice.encode() in page_bytes(result.report.to_json())
    assert result.report.to_json()["result"]["val_holds_floor"]
    # without a full recovery to come, the same floor is a refusal naming the best mix
    with pytest.raises(SlimkitError, match="the best of .* mixes .* scores [0-9.]+ after 3 KD steps; loosen"):
        slimkit.compress(tiny_resnet(), train, val, test, floor=between, **{**TINY, **kw, "recover_steps": 0})


def test_each_tried_mix_leaves_a_line_with_its_score(data, scored_by_params, capsys):
    train, val, test = data
    settings = {**TINY, "progress": True}
    probe = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0,
                             timer=macs_timer(val.x[:1]), timing_method="t", **TINY)
    scores = [c.params / 1e5 for c in probe.candidates]
    capsys.readouterr()
    with pytest.raises(SlimkitError, match="the best of"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=lambda d: max(scores) + 0.01,
                         timer=macs_timer(val.x[:1]), timing_method="t", **settings)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mix ")]
    assert len(lines) == len(scores)  # every mix was tried, and each says how it scored
    assert lines[0].startswith(f"mix 1/{len(scores)} ") and f"val accuracy {scores[0]:.4g} misses" in lines[0]


def test_floor_stricter_than_dense_is_refused_before_the_search(data, monkeypatch):
    train, val, test = data
    monkeypatch.setattr(run_mod, "search", lambda *a, **k: pytest.fail("searched"))
    with pytest.raises(SlimkitError, match="stricter than the dense model's own"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=1.01,
                         timer=macs_timer(val.x[:1]), timing_method="t", **TINY)


def test_unreachable_macs_target_is_refused_with_the_deepest_cut(data):
    train, val, test = data
    with pytest.raises(SlimkitError, match=r"gives [0-9.]+x fewer macs; try macs="):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=500x", floor=0.0,
                         timer=lambda ms: pytest.fail("timed"), timing_method="t", **TINY)


# -- latency: the method is stated and a result not measured faster is refused ----------------------
def test_deciding_timer_states_its_method():
    _, method = deciding_timer(tiny_resnet(), torch.zeros(1, 1, 8, 8))
    assert "fresh processes" in method and "OMP_WAIT_POLICY=ACTIVE" in method
    foreign = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU())
    _, method = deciding_timer(foreign, torch.zeros(1, 1, 8, 8))
    assert method.startswith("in this process") and "cannot be rebuilt" in method


def test_latency_target_uses_measured_times(data):
    train, val, test = data
    result = slimkit.compress(tiny_resnet(), train, val, test, target="latency=0.5x", floor=0.0,
                              timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", ratios=(0.5, 0.8), **TINY)
    assert result.report.timing == "MACs as ms (test)"
    assert all(c.latency_share <= 0.5 for c in result.candidates)
    with pytest.raises(SlimkitError, match="the fastest cut tried is 0.[0-9]+x the dense latency"):
        slimkit.compress(tiny_resnet(), train, val, test, target="latency=0.01x", floor=0.0,
                         timer=macs_timer(val.x[:1]), timing_method="t", ratios=(0.5,), **TINY)


def test_not_faster_is_refused_and_nothing_written(data, tmp_path):
    train, val, test = data
    slower = lambda models: [1.0] + [2.0] * (len(models) - 1)
    out = tmp_path / "run"
    with pytest.raises(NotFasterError, match="not faster here"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0, out=out, timer=slower,
                         timing_method="t", **TINY)
    assert not out.exists() and not list(tmp_path.iterdir())
    kept = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0, timer=slower,
                            timing_method="t", keep_slower=True, **TINY)
    assert kept.faster is False and kept.report.result.faster is False


def test_injected_timer_needs_its_method(data):
    train, val, test = data
    with pytest.raises(SlimkitError, match="timing_method"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", timer=macs_timer(val.x[:1]), **TINY)


# -- the factory path -----------------------------------------------------------------------------
FACTORY = '''
import torch
from slimkit.data import load_digits
from slimkit.models import ResNetCifar

def build():
    torch.manual_seed(0)
    d = load_digits(seed=0)
    return {"model": ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=8), "data": d}

def weights():
    return {"w": torch.zeros(2)}
'''


def test_factory_resolves_and_refuses(tmp_path, monkeypatch):
    (tmp_path / "compress_factory_mod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    src = load_factory("compress_factory_mod:build")
    assert isinstance(src.model, ResNetCifar) and set(src.data) == {"train", "val", "test"}
    with pytest.raises(SlimkitError, match="without a 'model' entry"):
        load_factory("compress_factory_mod:weights")
    with pytest.raises(SlimkitError, match="has no callable 'nothing'"):
        load_factory("compress_factory_mod:nothing")
    with pytest.raises(SlimkitError, match="cannot import 'no_such_module_here'"):
        load_factory("no_such_module_here:build")
    assert not (tmp_path / "__pycache__").exists()  # nothing written into the user's folder


def test_cli_compress_from_a_factory(tmp_path, monkeypatch):
    from slimkit.cli.main import app

    (tmp_path / "compress_factory_mod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["compress", "compress_factory_mod:build", "--out", "run", "--target", "macs=2x",
                                   "--floor", "0", "--search-steps", "2", "--recover-steps", "2", "--batch-size", "64",
                                   "--train-n", "128", "--max-blocks", "0", "--keep-slower"])
    assert res.exit_code == 0, res.output
    assert "wrote run:" in res.output and (tmp_path / "run" / "report.json").is_file()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    said = "met" if report["result"]["meets_target"] else "missed"
    assert f"target {report['target']} {said})" in res.output  # the final line says whether the target was met
    assert "fresh processes" in report["timing"]  # a slimkit model is timed by the deciding timer
    assert report["result"]["speedup"] == pytest.approx(report["dense"]["ms"] / report["result"]["ms"])


def test_the_target_verdict_follows_the_final_measurement_not_the_search():
    from slimkit.compression.result import CompressReport

    result = {"macs": 10, "params": 10, "ms": 0.514, "val": {"accuracy": 0.9}, "latency_share": 0.514,
              "speedup": 1.95, "macs_reduction": 2.0, "faster": True, "meets_target": False, "val_holds_floor": True}
    report = CompressReport(task="classification", metric="accuracy", higher_is_better=True, target="latency=0.5x",
                            floor="-1pt", floor_value=0.89, timing="t", cutter="c", kept_intact={}, settings={},
                            data="d", dense={"macs": 20, "params": 20, "ms": 1.0, "val": {"accuracy": 0.9}},
                            block_ranking=[], candidates=[], chosen=0, candidates_tried=1, provenance={},
                            result=result)
    assert report.target_verdict == "target latency=0.5x missed"  # 0.514 measured: the search's 0.49 is not said
    report.result.meets_target = True
    assert report.target_verdict == "target latency=0.5x met"
    with pytest.raises(Exception):  # the report's shape is checked: a misspelt field is refused
        CompressReport(**{**report.model_dump(), "speedup": 2.0})


# -- models slimkit did not write: saved so they reload, kept parts named -------------------------
def test_a_model_that_cannot_be_rebuilt_is_refused_before_work(data, tmp_path, monkeypatch):
    train, val, test = data
    monkeypatch.setattr(run_mod, "calibration_batches", lambda *a, **k: pytest.fail("work started"))
    foreign = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(288, 10))
    with pytest.raises(SlimkitError, match="pass builder="):
        slimkit.compress(foreign, train, val, test, target="macs=2x", out=tmp_path / "run", timer=macs_timer(val.x[:1]),
                         timing_method="t", **TINY)
    with pytest.raises(SlimkitError, match="does not build this"):  # a builder of another shape
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", out=tmp_path / "run",
                         builder=(ResNetCifar, {"depth": 8, "width": 8, "num_classes": 10, "in_channels": 1,
                                                "input_size": 8}), timer=macs_timer(val.x[:1]), timing_method="t",
                         **TINY)
    assert not list(tmp_path.iterdir())


def test_crnn_conv_cut_lstm_kept_named_and_reloaded(tmp_path):
    from slimkit.data import text_recognition_data
    from slimkit.distill import cer, ctc_loss, sequence_logits
    from slimkit.io import load_model
    from tests.crnn import CRNN

    words = text_recognition_data(n_train=64, n_val=16, n_test=16, seed=0)
    kwargs = {"width": 16, "hidden": 16, "classes": 27}
    torch.manual_seed(0)
    dense = CRNN(**kwargs).eval()
    x = words["val"].tensors()[0][:4]
    out = tmp_path / "run"
    # no recovery steps: every weight the cut keeps must be the dense model's own
    result = slimkit.compress(dense, words["train"].tensors(), words["val"].tensors(), words["test"].tensors(),
                              task=sequence_logits(cer(), supervised=ctc_loss()), target="macs=1.5x",
                              floor=lambda d: 100.0, out=out, builder=(CRNN, kwargs), timer=macs_timer(x[:1]),
                              timing_method="MACs as ms (test)", search_steps=0, recover_steps=0, batch_size=16,
                              calib_batches=2, progress=False)
    cut = result.model
    assert cut.conv[4].out_channels < dense.conv[4].out_channels  # the conv backbone is cut
    for name in ("weight_hh_l0", "weight_hh_l0_reverse", "bias_ih_l0", "bias_hh_l0_reverse"):
        assert torch.equal(getattr(cut.rnn, name), getattr(dense.rnn, name))  # the LSTM is kept
    cols_dense = {tuple(c.tolist()) for c in dense.rnn.weight_ih_l0.detach().T}
    assert all(tuple(c.tolist()) in cols_dense for c in cut.rnn.weight_ih_l0.detach().T)  # its inputs follow the cut
    assert cut.rnn.weight_ih_l0.shape[1] < dense.rnn.weight_ih_l0.shape[1]
    report = json.loads((out / "report.json").read_text())
    assert "rnn" in report["kept_intact"]["modules"] and report["metric"] == "cer"
    assert report["higher_is_better"] is False and report["rebuild"]["builder"] == "tests.crnn:CRNN"
    assert "| rnn |" in (out / "report.md").read_text()
    assert report["saved"]["path"] == "model.safetensors"
    reloaded = load_model(out / "model.safetensors", builder=CRNN).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x), cut.eval()(x), atol=1e-5)
    _, method = deciding_timer(dense, x[:1], plan=slimkit.compression.plan_rebuild(dense, (CRNN, kwargs)))
    assert "fresh processes" in method and "tests.crnn:CRNN" in method
    _, method = deciding_timer(dense, x[:1], plan=slimkit.compression.plan_rebuild(dense, lambda: CRNN(**kwargs)))
    assert method.startswith("in this process") and "package.module:callable" in method


def test_hugging_face_model_compressed_to_a_folder_that_reloads(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from slimkit.data.arrays import Split
    from slimkit.io.hf_folder import load_hf

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(config).eval()
    x, y = torch.randn(96, 3, 16, 16), torch.randint(0, 3, (96,))
    train, val, test = Split(x[:64], y[:64]), Split(x[64:80], y[64:80]), Split(x[80:], y[80:])
    out = tmp_path / "run"
    result = slimkit.compress(model, train, val, test, target="macs=1.3x", floor=0.0, out=out,
                              timer=macs_timer(x[:1]), timing_method="MACs as ms (test)", max_blocks=0, **TINY)
    assert result.model.config.intermediate_size < 64  # the FFN was cut (no layer may go: max_blocks=0)
    assert result.report.cutter == "encoder"  # the hf-encoder family's cutter, found by what the model is
    report = json.loads((out / "report.json").read_text())
    assert report["saved"]["path"] == "model" and report["rebuild"]["kind"] == "hf"
    assert "vit.embeddings" in report["kept_intact"]["modules"]
    with torch.no_grad():
        expected = result.model.eval()(x[:8]).logits
        assert torch.allclose(load_hf(out / "model")(x[:8]).logits, expected, atol=1e-5)
        # a uniform FFN cut: the config carries the widths, so plain from_pretrained rebuilds it
        plain = ViTForImageClassification.from_pretrained(out / "model", local_files_only=True).eval()
        assert torch.allclose(plain(x[:8]).logits, expected, atol=1e-5)
    _, method = deciding_timer(model, x[:1])
    assert "fresh processes" in method and "Hugging Face folders" in method


FOREIGN_FACTORY = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

def no_builder():
    return {"model": build()}
'''


def test_cli_factory_of_a_bare_model_is_its_builder(tmp_path, monkeypatch):
    from slimkit.cli.main import app
    from slimkit.io import import_builder, load_model

    (tmp_path / "foreign_factory_mod.py").write_text(FOREIGN_FACTORY)
    monkeypatch.chdir(tmp_path)
    args = ["--data", "digits", "--target", "macs=2x", "--floor", "0", "--search-steps", "2", "--recover-steps", "2",
            "--batch-size", "64", "--train-n", "128", "--keep-slower"]
    res = CliRunner().invoke(app, ["compress", "foreign_factory_mod:no_builder", "--out", "refused", *args])
    assert res.exit_code == 2 and "pass builder=" in res.output and not (tmp_path / "refused").exists()
    res = CliRunner().invoke(app, ["compress", "foreign_factory_mod:build", "--out", "run", *args])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["rebuild"]["builder"] == "foreign_factory_mod:build"
    assert "fresh processes" in report["timing"] and "foreign_factory_mod:build" in report["timing"]
    model = load_model(tmp_path / "run" / "model.safetensors", builder=import_builder("foreign_factory_mod:build"))
    assert model[0].out_channels < 16  # the cut model, rebuilt from the factory's dense one


def test_taylor_importance_uses_the_training_labels(data):
    """Taylor scores are the gradient of the loss on the labels: compress hands the cutter the
    calibration batches' labels, and the pruner refuses unlabelled batches in one line."""
    train, val, _ = data
    res = slimkit.compress(tiny_resnet(), train, val, None, target="macs=2x", floor=0.0, seed=3, importance="taylor",
                           timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    assert res.report.settings["importance"] == "taylor" and res.chosen.kept
    with pytest.raises(SlimkitError, match="labelled calibration batches"):
        from slimkit.prune import prune_structured

        prune_structured(tiny_resnet(), val.x[:1], 0.5, "taylor", calib=[(val.x[:8], None)])
