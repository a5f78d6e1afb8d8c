"""The whole pipeline, end to end, on the real 8x8 digits (seconds, not minutes)."""

import json
import re

import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit.demo.pipeline import load_recipe, make_config, run_demo


def _cfg(tmp_path, **kw):
    base = dict(dataset="digits", teacher_epochs=3, student_epochs=3, finetune_epochs=1, batch_size=32,
                lr=5e-3, finetune_lr=1e-3, latency_runs=5, out=str(tmp_path / "run"), headline=False)
    return make_config(**{**base, **kw})


def test_demo_writes_report_and_checkpoints(tmp_path):
    result = run_demo(_cfg(tmp_path), progress=False)
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["teacher", "pruned teacher (50% unstructured)", "student KD", "student scratch"]
    rows = {r["name"]: r for r in report["rows"]}
    teacher, pruned = rows["teacher"], rows["pruned teacher (50% unstructured)"]
    assert teacher["accuracy"] > 0.85
    assert pruned["params_nonzero"] < 0.6 * teacher["params_total"]
    assert pruned["macs"] == teacher["macs"]  # unstructured zeros: dense kernels do the same work
    assert rows["student KD"]["macs"] < teacher["macs"] / 3.5
    assert report["prune"]["kept_total"] == pytest.approx(0.5, abs=0.01)
    assert any("no speed-up" in n for n in report["notes"])
    assert "| teacher |" in (out / "report.md").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "pruned_teacher.safetensors", "student_kd.safetensors", "student_scratch.safetensors", "teacher.safetensors"]
    assert not list(tmp_path.glob(".run.*"))
    assert result["timings_s"]["teacher"] > 0


def test_teacher_is_reused_from_cache_and_results_are_seeded(tmp_path):
    first = run_demo(_cfg(tmp_path, out=str(tmp_path / "a")), progress=False)
    second = run_demo(_cfg(tmp_path, out=str(tmp_path / "b")), progress=False)
    assert "reused from cache" in second["header"]
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [r["accuracy"] for r in a["rows"]] == [r["accuracy"] for r in b["rows"]]
    assert a["prune"]["kept_per_layer"] == b["prune"]["kept_per_layer"]
    assert first["history"]["student_kd"][0]["train_loss"] == second["history"]["student_kd"][0]["train_loss"]


def test_theta_overrides_sparsity(tmp_path):
    cfg = _cfg(tmp_path, theta=0.02, sparsity=0.5)
    assert cfg.sparsity is None and cfg.theta == 0.02


def test_bad_settings_fail_before_any_work(tmp_path):
    with pytest.raises(SlimkitError, match=r"sparsity must be in \[0, 1\)"):
        _cfg(tmp_path, sparsity=1.5)
    with pytest.raises(SlimkitError, match="invalid setting epochs_typo"):
        _cfg(tmp_path, epochs_typo=3)
    with pytest.raises(SlimkitError, match="invalid setting headline_target: cannot read target 'speed=2x'"):
        _cfg(tmp_path, headline_target="speed=2x")
    with pytest.raises(SlimkitError, match="invalid setting headline_floor: cannot read floor"):
        _cfg(tmp_path, headline_floor="one point")
    assert _cfg(tmp_path, headline_floor=0.9).headline_floor == 0.9  # YAML reads `headline_floor: 0.9` as a number
    with pytest.raises(SlimkitError, match="set val_fraction > 0, or headline: false"):
        _cfg(tmp_path, headline=True, val_fraction=0)
    with pytest.raises(SlimkitError, match="unknown model 'resnet9000'"):
        run_demo(_cfg(tmp_path, student="resnet9000"), progress=False)
    assert not (tmp_path / "run").exists()


def test_recipe_is_safe_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: digits\nsparsity: 0.3\nout: somewhere\n")
    cfg = load_recipe(recipe)
    assert cfg.sparsity == 0.3 and cfg.dataset == "digits"
    recipe.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SlimkitError, match="not valid YAML"):
        load_recipe(recipe)
    recipe.write_text("- a\n- b\n")
    with pytest.raises(SlimkitError, match="mapping"):
        load_recipe(recipe)


@pytest.mark.parametrize("text, message", [
    ("dataset: digits\nout: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 24); save it as UTF-8"),
    (b"1: 2\ndataset: digits\n", "setting names that are not text: [1]"),
    (b"null: 3\n", "setting names that are not text: [None]"),
    (b"dataset: no/such/data.npz\n", "names data file no/such/data.npz, which is not a file"),
    (b"data_dir: /no/such/fashion\n", "names data folder /no/such/fashion, which does not exist"),
    (b"theta: .nan\n", "invalid setting theta: Input should be a finite number"),
    (b"theta: -0.1\n", "invalid setting theta: Input should be greater than or equal to 0"),
    (b"lr: .inf\n", "invalid setting lr: Input should be a finite number"),
])
def test_bad_recipes_are_refused_when_loaded(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(text)
    with pytest.raises(SlimkitError, match=re.escape(message)):
        load_recipe(recipe)
    with pytest.raises(SlimkitError, match="is a folder"):
        load_recipe(tmp_path)


def test_theta_above_every_weight_is_refused_before_the_students_train(tmp_path):
    with pytest.raises(SlimkitError, match=r"theta 100 is at or above the largest \|w\|"):
        run_demo(_cfg(tmp_path, theta=100.0, teacher_epochs=1, student_epochs=1, finetune_epochs=0), progress=False)
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_demo_headline_rows_and_a_ce_control_on_the_same_cut(tmp_path, monkeypatch, digits):
    """The headline's three rows exist, and the control trained the KD row's structure on CE alone."""
    from slimkit.compression import recovery as recovery_mod
    from slimkit.io import load_model
    from slimkit.measure import count_macs

    made = []  # (teacher given to the engine, loss kinds) of every recovery, in order

    class Recording(recovery_mod.Distiller):
        def __init__(self, teacher, student, losses, *args, **kw):
            made.append((teacher, [t.kind for t in losses]))
            super().__init__(teacher, student, losses, *args, **kw)

    monkeypatch.setattr(recovery_mod, "Distiller", Recording)
    ex = digits.val.x[:1]
    cfg = _cfg(tmp_path, headline=True, train_subset=256, headline_floor="0", headline_search_steps=3,
               headline_recover_steps=4)
    result = run_demo(cfg, progress=False, timer=lambda ms: [count_macs(m, ex) / 1e6 for m in ms],
                      timing_method="MACs as ms (test)")
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    head = report["headline"]
    assert [r["name"] for r in head["rows"]] == ["dense teacher", "compress + KD", "same cut + CE"]
    dense, kd, _ = head["rows"]
    assert dense["latency_share"] == 1.0 and kd["macs_reduction"] > 1.5 and kd["latency_share"] < 0.5
    assert head["timing"] == "MACs as ms (test)" and head["compress"]["settings"]["recovery"] == "kd"
    assert any(n.startswith("KD against CE on the same cut") for n in head["notes"])
    assert result["timings_s"]["headline"] > 0
    md = (out / "report.md").read_text()
    assert "## Headline" in md and "| same cut + CE | ce |" in md and "| teacher |" in md
    # the page's KD-against-CE training plot: both recoveries' loss at every step, val after each phase
    for rec in (head["compress"]["training"], head["ce_training"]):
        assert [s for s, _ in rec["loss"]] == list(range(1, 8)) and [s for s, _ in rec["val"]] == [3, 7]
    assert "KD against CE on the same cut: test accuracy" in (out / "report.html").read_text()

    kd_model = load_model(out / "checkpoints" / "compressed_kd.safetensors")
    ce_model = load_model(out / "checkpoints" / "compressed_ce.safetensors")
    teacher = load_model(out / "checkpoints" / "teacher.safetensors")
    widths = {k: v.shape for k, v in kd_model.state_dict().items()}
    assert {k: v.shape for k, v in ce_model.state_dict().items()} == widths
    assert widths != {k: v.shape for k, v in teacher.state_dict().items()}  # really cut
    assert not torch.equal(ce_model.fc1.weight, kd_model.fc1.weight)
    # compress: one short recovery of the chosen mix, then the full one, both from the teacher;
    # the control: the same two phases with no teacher and the CE term alone
    assert [kinds for _, kinds in made] == [["kd", "ce"]] * 2 + [["ce"]] * 2
    assert all(t is not None for t, _ in made[:2]) and all(t is None for t, _ in made[2:])
