"""Floors written in the task's own metric: the grammar, its canonical text, its refusals, the metric a
floor picks from the task, and one compress run whose floor is on the task's second metric."""

import json

import pytest

import slimkit
from slimkit.compression.settings import FLOOR_HELP, Floor, floor_metric, looser_floor, parse_floor
from slimkit.distill.tasks import causal_lm, classification, embeddings, seq2seq
from slimkit.errors import SlimkitError
from tests.test_compress import TINY, data, macs_timer, tiny_resnet  # noqa: F401  (data: the fixture)

DENSE = {"accuracy": 0.90, "macro_f1": 0.80, "cer": 0.10, "wer": 0.20, "perplexity": 20.0, "cosine": 1.0,
         "nn_agreement": 0.8, "token_accuracy": 0.7}
HIGHER = {"accuracy": True, "macro_f1": True, "cer": False, "wer": False, "perplexity": False, "cosine": True,
          "nn_agreement": True, "token_accuracy": True}


def kind_of(f: Floor) -> str:
    return next(k for k in ("points", "multiple", "absolute", "rule") if getattr(f, k) is not None)


# -- the grammar ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,metric,kind,number,value", [
    # unnamed, as before: on the task's first metric (here accuracy, higher is better)
    ("-1pt", None, "points", 1.0, 0.89),
    ("0.95", None, "absolute", 0.95, 0.95),
    # points: N/100 in the metric's worse direction
    ("accuracy-1pt", "accuracy", "points", 1.0, 0.89),
    ("acc-2.5pt", "accuracy", "points", 2.5, 0.875),
    ("f1-10pt", "macro_f1", "points", 10.0, 0.70),
    ("cer+1pt", "cer", "points", 1.0, 0.11),
    ("wer+2pt", "wer", "points", 2.0, 0.22),
    ("token_accuracy-5pt", "token_accuracy", "points", 5.0, 0.65),
    # a multiple of the dense value
    ("ppl<=1.25x", "perplexity", "multiple", 1.25, 25.0),
    (" PPL <= 1.25 X ", "perplexity", "multiple", 1.25, 25.0),
    ("perplexity<=2x", "perplexity", "multiple", 2.0, 40.0),
    ("cosine>=0.95x", "cosine", "multiple", 0.95, 0.95),
    ("nn_agreement>=0.5x", "nn_agreement", "multiple", 0.5, 0.4),
    # an absolute value
    ("cosine>=0.95", "cosine", "absolute", 0.95, 0.95),
    ("cer<=0.05", "cer", "absolute", 0.05, 0.05),
    ("ppl<=30", "perplexity", "absolute", 30.0, 30.0),
    ("accuracy>=1e-2", "accuracy", "absolute", 0.01, 0.01),
])
def test_parse_table(text, metric, kind, number, value):
    f = parse_floor(text)
    assert f.metric == metric and kind_of(f) == kind and getattr(f, kind) == pytest.approx(number)
    on = metric or "accuracy"
    assert f.value(DENSE, on, HIGHER[on]) == pytest.approx(value)


def test_unnamed_points_follow_the_metric_they_are_read_on():
    f = parse_floor("-1pt")
    assert f.value(DENSE, "accuracy", True) == pytest.approx(0.89)
    assert f.value(DENSE, "cer", False) == pytest.approx(0.11)


@pytest.mark.parametrize("text,canonical", [
    ("-1pt", "-1pt"), ("0.95", "0.95"), ("accuracy-1pt", "accuracy-1pt"), ("acc - 1 pt", "accuracy-1pt"),
    ("f1-0.5pt", "macro_f1-0.5pt"), ("wer+2pt", "wer+2pt"), ("CER+1.0pt", "cer+1pt"),
    ("ppl<=1.25x", "perplexity<=1.25x"), ("ppl <= 1.250 x", "perplexity<=1.25x"), ("cosine>=0.95", "cosine>=0.95"),
    ("cosine>=0.95x", "cosine>=0.95x"), ("cer<=.05", "cer<=0.05"), ("accuracy>=1e-5", "accuracy>=1e-05"),
    ("my_score>=3", "my_score>=3"), ("my_loss<=2.5x", "my_loss<=2.5x"),
])
def test_canonical_text_round_trips(text, canonical):
    f = parse_floor(text)
    assert f.text == canonical
    assert parse_floor(f.text) == f
    assert parse_floor(f) is f


def test_numbers_callables_and_floors_work_as_before():
    assert parse_floor(0.5) == Floor(absolute=0.5) and parse_floor(0.5).text == "0.5"
    rule = parse_floor(lambda dense: dense["accuracy"] - 0.05)
    assert rule.rule is not None and rule.metric is None
    assert rule.value(DENSE, "accuracy", True) == pytest.approx(0.85)
    assert parse_floor(Floor(points=2)).value(DENSE, "cer", False) == pytest.approx(0.12)
    # a Floor built in Python gets its bound from the metric's known direction, and reads like the text
    assert Floor(points=1, metric="ppl") == parse_floor("ppl+1pt")
    assert Floor(multiple=1.25, metric="perplexity").text == "perplexity<=1.25x"


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    # pointing the better way: says which way the metric improves, and the corrected floor
    ("wer-2pt", "wer improves as it falls, so a floor lets it rise: write wer+2pt"),
    ("accuracy+1pt", "accuracy improves as it rises, so a floor lets it fall: write accuracy-1pt"),
    ("acc+1pt", "write acc-1pt"),
    ("ppl>=1.25x", "perplexity improves as it falls: a floor is its most acceptable value: write ppl<=1.25x"),
    ("ppl>=0.8x", "write ppl<=1.25x"),  # the same loss, on the right side of 1
    ("accuracy<=0.9", "accuracy improves as it rises: a floor is its least acceptable value: write accuracy>=0.9"),
    ("cer>=0.05", "write cer<=0.05"),
    # a multiple that asks for no loss, or an improvement
    ("ppl<=1x", "allow a loss with a multiple above 1, e.g. ppl<=1.25x"),
    ("ppl<=0.8x", "no loss at all or a gain"),
    ("cosine>=1.1x", "allow a loss with a multiple below 1, e.g. cosine>=0.95x"),
    ("ppl<=0x", "a multiple is a positive number"),
])
def test_refusals_say_what_is_wrong_and_the_fix(text, message):
    with pytest.raises(SlimkitError) as err:
        parse_floor(text)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert repr(text.strip()) in str(err.value)


@pytest.mark.parametrize("text", ["+1pt", "-1 points", "one", "ppl<1.2", "ppl=<1.2x", "ppl==1.2", "accuracy-1pt5",
                                  "1.25x", ">=0.9", "accuracy>=", "nan", "ppl<=infx"])
def test_unreadable_floors_show_the_grammar(text):
    with pytest.raises(SlimkitError, match="-1pt") as err:
        parse_floor(text)
    assert FLOOR_HELP in str(err.value) or "is not a number" in str(err.value)


def test_floor_objects_check_their_fields():
    with pytest.raises(SlimkitError, match="names its metric"):
        Floor(multiple=1.25)
    with pytest.raises(SlimkitError, match="bound='>='"):
        Floor(points=1, metric="my_score")  # direction unknown: the bound must be given
    assert Floor(points=1, metric="my_score", bound="<=").text == "my_score+1pt"


@pytest.mark.parametrize("metric,default", [("accuracy", "-1pt"), ("macro_f1", "-1pt"), ("wer", "wer+2pt"),
                                            ("cer", "cer+1pt"), ("perplexity", "ppl<=1.25x"), ("ppl", "ppl<=1.25x"),
                                            ("cosine", "cosine>=0.95"), ("token_accuracy", "-1pt")])
def test_the_looser_floor_a_refusal_suggests_is_on_the_same_metric_and_looser(metric, default):
    """A refusal on WER must not suggest '-3pt': each suggestion reads on its own metric and admits more."""
    on = {"ppl": "perplexity"}.get(metric, metric)
    loose, tight = parse_floor(looser_floor(metric)), parse_floor(default)
    assert loose.metric in (None, on)
    a, b = loose.value(DENSE, on, HIGHER[on]), tight.value(DENSE, on, HIGHER[on])
    assert a < b if HIGHER[on] else a > b


# -- the metric a floor picks ---------------------------------------------------------------------
def test_floor_metric_picks_the_named_metric():
    assert floor_metric(parse_floor("-1pt"), classification()).name == "accuracy"  # the first, as before
    assert floor_metric(parse_floor("f1-1pt"), classification()).name == "macro_f1"
    assert floor_metric(parse_floor("ppl<=1.25x"), causal_lm()).name == "perplexity"
    assert floor_metric(parse_floor("nn_agreement>=0.9"), embeddings()).name == "nn_agreement"
    assert floor_metric(parse_floor("token_accuracy-2pt"), seq2seq()).name == "token_accuracy"


@pytest.mark.parametrize("text,task,message", [
    ("accuracy-1pt", causal_lm, "the causal_lm task measures perplexity; write e.g. ppl<=1.25x"),
    ("ppl<=1.25x", classification, "the classification task measures accuracy, macro_f1; write e.g. accuracy-1pt"),
    ("cer+1pt", embeddings, "the embeddings task measures cosine, nn_agreement; write e.g. cosine-1pt"),
    ("wer+2pt", seq2seq, "the seq2seq task measures token_accuracy; write e.g. token_accuracy-1pt"),
])
def test_floor_metric_refuses_a_metric_the_task_lacks(text, task, message):
    with pytest.raises(SlimkitError) as err:
        floor_metric(parse_floor(text), task())
    assert message in str(err.value) and "which the" in str(err.value)


def test_floor_metric_checks_the_direction_of_a_custom_metric():
    from slimkit.distill.tasks import Metric, Task

    loss = Metric("my_loss", lambda v, y: (0, 1), higher_is_better=False)
    task = Task("custom", (loss,))
    assert floor_metric(parse_floor("my_loss<=1.5x"), task) is loss
    with pytest.raises(SlimkitError, match="my_loss improves as it falls.*write my_loss<=1.5x"):
        floor_metric(parse_floor("my_loss>=1.5x"), task)
    with pytest.raises(SlimkitError, match="no validation metric"):
        floor_metric(parse_floor("-1pt"), Task("bare"))


# -- a run on the second metric -------------------------------------------------------------------
def test_compress_reads_the_floors_metric(data, tmp_path):  # noqa: F811
    train, val, test = data
    out = tmp_path / "run"
    result = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor="f1-100pt", out=out, seed=3,
                              timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "macro_f1" and report["higher_is_better"] is True
    assert report["floor"] == "macro_f1-100pt" and report["settings"]["floor"] == "f1-100pt"
    assert report["floor_value"] == pytest.approx(report["dense"]["val"]["macro_f1"] - 1.0)
    assert report["dense"]["val"]["macro_f1"] != report["dense"]["val"]["accuracy"]  # the test tells them apart
    assert result.report.result.val_holds_floor
    assert "validation macro_f1" in (out / "report.md").read_text()
    # a metric the task lacks is refused before any work: the data are never read
    with pytest.raises(SlimkitError, match="the classification task measures accuracy, macro_f1"):
        slimkit.compress(tiny_resnet(), None, None, None, target="macs=2x", floor="ppl<=1.25x",
                         timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
