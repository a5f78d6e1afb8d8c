import pytest
import torch
from torch import nn

from slimkit.measure import classification_metrics, count_macs, count_params, file_size_bytes, measure_latency
from slimkit.models import SourceModel, TargetModel


def test_params_count_total_and_nonzero():
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[0].zero_()
    assert count_params(model) == (15, 11)


def test_macs_of_linear_and_conv_match_hand_counts():
    assert count_macs(nn.Linear(10, 5), torch.zeros(2, 10)) == 2 * 10 * 5
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 3, 8, 8)) == 4 * 3 * 9 * 64


def test_seed_cnn_macs_and_student_is_smaller():
    teacher, student = SourceModel(), TargetModel()
    x = torch.zeros(1, 1, 28, 28)
    expected = 64 * 9 * 784 + 128 * 64 * 9 * 196 + 128 * 49 * 1024 + 1024 * 10
    assert count_macs(teacher, x) == expected
    assert count_macs(teacher, x) / count_macs(student, x) > 3.9


def test_seed_cnn_accepts_cifar_shapes_and_rejects_mismatch():
    model = SourceModel(in_channels=3, input_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    from slimkit.errors import SlimkitError

    with pytest.raises(SlimkitError, match=r"expects input of shape \(N, 3, 32, 32\)"):
        model(torch.zeros(2, 1, 28, 28))


def test_unstructured_zeros_do_not_change_macs():
    model = nn.Linear(16, 16)
    dense = count_macs(model, torch.zeros(1, 16))
    with torch.no_grad():
        model.weight[:8].zero_()
    assert count_macs(model, torch.zeros(1, 16)) == dense


def test_latency_reports_conditions():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the 1 asked for below, so a leaked setting would show
    try:
        result = measure_latency(nn.Linear(8, 8), torch.zeros(4, 8), runs=7, warmup=2, threads=1)
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
    finally:
        torch.set_num_threads(before)
    assert result.runs == 7 and result.threads == 1 and result.batch_size == 4
    assert 0 < result.median_ms <= result.p90_ms


def test_metrics_accuracy_f1_confusion():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    m = classification_metrics(preds, labels, 3)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1 = [2 * 1 / (2 + 2), 2 * 2 / (3 + 2), 2 * 1 / (1 + 2)]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)


def test_file_size(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert file_size_bytes(tmp_path / "a") == 10 and file_size_bytes(tmp_path) == 15


def test_interleaved_latency_ranks_models_by_work_and_restores_modes():
    from slimkit.measure import measure_latency_interleaved

    small, large = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    small.train()
    results = measure_latency_interleaved([small, nn.Sequential(nn.Linear(64, 512), large)], torch.zeros(32, 64),
                                          runs=9, warmup=2, threads=1)
    assert [r.runs for r in results] == [9 * 4, 9 * 4] and all(r.threads == 1 for r in results)  # default burst 5
    assert results[0].median_ms < results[1].median_ms
    assert small.training


def test_interleaved_latency_stat_picks_min_or_median():
    from slimkit.errors import SlimkitError
    from slimkit.measure import measure_latency_interleaved

    model = nn.Linear(32, 32)
    med, = measure_latency_interleaved([model], torch.zeros(1, 32), runs=15, warmup=1, threads=1)
    low, = measure_latency_interleaved([model], torch.zeros(1, 32), runs=15, warmup=1, threads=1, stat="min")
    assert med.stat == "median" and med.ms == med.median_ms
    assert low.stat == "min" and low.ms == low.min_ms <= low.median_ms <= low.p90_ms
    with pytest.raises(SlimkitError, match="stat"):
        measure_latency_interleaved([model], torch.zeros(1, 32), runs=3, stat="mean")
    with pytest.raises(SlimkitError, match="runs"):
        measure_latency_interleaved([model], torch.zeros(1, 32), runs=0)


def test_interleaved_latency_burst_runs_each_model_in_a_row_and_drops_the_cold_call():
    from slimkit.errors import SlimkitError
    from slimkit.measure import measure_latency_interleaved

    calls: list[str] = []

    class Tagged(nn.Linear):
        def __init__(self, tag: str) -> None:
            super().__init__(8, 8)
            self.tag = tag

        def forward(self, x):
            calls.append(self.tag)
            return super().forward(x)

    a, b = Tagged("a"), Tagged("b")
    ra, rb = measure_latency_interleaved([a, b], torch.zeros(1, 8), runs=4, warmup=0, threads=1, burst=3)
    assert ra.runs == rb.runs == 4 * 2  # the first call of each burst of 3 is not recorded
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    with pytest.raises(SlimkitError, match="burst"):
        measure_latency_interleaved([a], torch.zeros(1, 8), runs=2, burst=0)


def test_fresh_process_timer_ranks_models_and_spins():
    """The deciding timer runs in new processes with OMP_WAIT_POLICY=ACTIVE (it refuses otherwise)."""
    from slimkit.measure.fresh import time_in_fresh_processes
    from slimkit.models import ResNetCifar

    torch.manual_seed(0)
    small, big = ResNetCifar(depth=8, width=8).eval(), ResNetCifar(depth=14, width=48).eval()
    x = torch.randn(1, 1, 28, 28)
    times = time_in_fresh_processes([small, big], x, ["nchw", "channels_last"], rounds=5, passes=2, log=False)
    assert [sorted(t) for t in times] == [["channels_last", "nchw"]] * 2
    assert times[0]["nchw"] < times[1]["nchw"] and times[0]["channels_last"] < times[1]["channels_last"]
