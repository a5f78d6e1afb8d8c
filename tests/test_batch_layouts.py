"""Batch layouts: a list means what a tuple means, everywhere a batch, its targets or a model's
example is read (in-memory data, loader batches, CTC targets, MAC counting, pruning); a layout that
cannot be read is refused in one SlimkitError line that names the layout expected."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimkit.distill import Distiller, TrainConfig, ce, cer, ctc_loss, evaluate, kd, sequence_logits
from slimkit.distill.train_data import InMemory, Loader, as_train_data, batches_of
from slimkit.errors import SlimkitError
from slimkit.measure import count_macs
from tests.crnn import teacher_and_student


def _words(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (N, 1, 16, 32), labels (N, 5) padded with 0, lengths (N,)): the CTC layout of tests/test_crnn.py."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 16, 32, generator=g)
    lengths = torch.randint(1, 6, (n,), generator=g)
    labels = torch.randint(1, 27, (n, 5), generator=g)
    labels[torch.arange(5)[None, :] >= lengths[:, None]] = 0
    return images, labels, lengths


def _task():
    return sequence_logits(cer(), supervised=ctc_loss())


# -- CTC targets -----------------------------------------------------------------------------------
def test_cer_and_ctc_loss_read_list_targets_as_tuples():
    _, labels, lengths = _words(8)
    view = torch.randn(8, 8, 27, generator=torch.Generator().manual_seed(1))
    metric, loss = cer(), ctc_loss()
    assert metric.batch(view, [labels, lengths]) == metric.batch(view, (labels, lengths))
    assert torch.equal(loss(view, [labels, lengths], None), loss(view, (labels, lengths), None))


@pytest.mark.parametrize("targets", [None, "labels", (torch.zeros(2, 3, dtype=torch.long),)])
def test_ctc_targets_in_another_layout_are_one_line(targets):
    view = torch.randn(2, 8, 27)
    for fn in (lambda: cer().batch(view, targets), lambda: ctc_loss()(view, targets, None)):
        with pytest.raises(SlimkitError, match=r"CTC targets must be \(labels \(N, S\), label lengths \(N,\)\)") as e:
            fn()
        assert "\n" not in str(e.value)


# -- in-memory data --------------------------------------------------------------------------------
def test_a_list_of_tensors_is_in_memory_data_like_a_tuple():
    words = _words(10)
    as_list, as_tuple = as_train_data(list(words)), as_train_data(words)
    assert isinstance(as_list, InMemory) and isinstance(as_tuple, InMemory) and len(as_list) == len(as_tuple) == 10
    for a, b in zip(batches_of(list(words), 4), batches_of(words, 4)):
        assert type(a) is type(b) is tuple and all(torch.equal(x, y) for x, y in zip(a, b))
    single = as_train_data([words[0]])  # [x] is (x,): batches are the tensor itself
    assert torch.equal(next(single.chunks(3)), words[0][:3])


def test_evaluate_on_a_list_gives_the_tuple_numbers():
    torch.manual_seed(0)
    _, student = teacher_and_student()
    words, task = _words(), _task()
    want = evaluate(student, words, task, batch_size=8)
    assert evaluate(student, list(words), task, batch_size=8) == want
    loader = DataLoader(TensorDataset(*words), batch_size=8)  # default collate: list batches [x, labels, lengths]
    assert isinstance(next(iter(loader)), list)
    assert evaluate(student, loader, task) == want


def test_distiller_steps_on_a_list_match_the_tuple_form():
    words, task = _words(), _task()

    def run(layout):
        torch.manual_seed(0)
        teacher, student = teacher_and_student()
        cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=1, max_steps=5, seed=3)
        d = Distiller(teacher, student, [kd(0.5, 2.0), ce(0.5)], cfg, task=task)
        history = d.fit(layout(words), layout(words[0:3]), progress=False)
        return d.steps_done, [h.metrics for h in history], student.state_dict()

    steps, metrics, weights = run(tuple)
    l_steps, l_metrics, l_weights = run(list)
    assert steps == l_steps == 5 and l_metrics == metrics
    assert all(torch.equal(weights[k], l_weights[k]) for k in weights)


def test_lists_that_cannot_be_in_memory_data_are_refused_in_one_line():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (6,))
    for bad in ([x, y], [x, (x, y)], [x, torch.tensor(1.0)]):
        with pytest.raises(SlimkitError, match=r"a list of batches holds tuples or dicts") as e:
            as_train_data(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(SlimkitError, match=r"in-memory data must be tensors sharing their first dimension"):
        as_train_data((x, torch.tensor(1.0)))  # a 0-d tensor has no samples (was an IndexError)
    batches = [(x[:4],), (x[4:],)]  # input-only batches in a list: 1-tuples
    assert isinstance(as_train_data(batches), Loader)
    assert [b[0].shape[0] for b in batches_of(batches, 64)] == [4, 4]


# -- examples handed to a model --------------------------------------------------------------------
class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head((self.a(x) + self.b(y)).relu().mean((2, 3)))


def test_a_list_example_is_called_like_a_tuple():
    from slimkit.measure.cost import _batch_size
    from slimkit.prune.structured import prune_structured

    model = _TwoInputs().eval()
    x, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert count_macs(model, [x, y]) == count_macs(model, (x, y)) > 0
    assert _batch_size([x, y]) == _batch_size((x, y)) == 2
    cut = {kind: prune_structured(_TwoInputs().eval(), kind((x, y)), 0.5).model for kind in (tuple, list)}
    shapes = {kind: [tuple(p.shape) for p in m.parameters()] for kind, m in cut.items()}
    assert shapes[list] == shapes[tuple]


# -- compress --------------------------------------------------------------------------------------
def test_compress_on_lists_matches_the_tuple_run():
    import slimkit
    from tests.crnn import CRNN

    train, val = _words(32, seed=0), _words(16, seed=1)
    x = val[0][:1]

    def run(layout):
        torch.manual_seed(0)
        dense = CRNN(width=16, hidden=16, classes=27).eval()
        return slimkit.compress(dense, layout(train), layout(val), layout(val), task=_task(), target="macs=1.5x",
                                floor=lambda d: 100.0, timer=lambda ms: [count_macs(m, x) / 1e6 for m in ms],
                                timing_method="MACs as ms (test)", search_steps=0, recover_steps=2, batch_size=16,
                                calib_batches=2, progress=False)

    want, got = run(tuple), run(list)
    for key in ("dense", "result", "chosen"):
        assert getattr(got.report, key) == getattr(want.report, key)
    assert "cer" in got.report.result.val and got.report.result.macs < got.report.dense.macs
    weights = want.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in got.model.state_dict().items())
