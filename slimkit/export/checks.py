"""Task checks of an exported model against the PyTorch model it came from.

Element-wise equality on a few inputs says the graph computes the same function; the task metric
on a whole held-out split says the small differences that remain (fused kernels, other summation
orders) change no decision that matters. A classifier's ONNX accuracy must equal PyTorch's within
`tolerance_pt` points on the split; an encoder's mean-pooled sentence embeddings must keep a cosine
of at least `min_cosine` to PyTorch's on every held-out sentence.

Each `*_check` returns a validator for `export_onnx(validate=...)`: it runs on the exported model
before the file is written and raises one SlimkitError line when the export does not match.
"""

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.data.arrays import Split
from slimkit.errors import SlimkitError
from slimkit.export.runtime import OrtModel
from slimkit.measure import classification_metrics, predict_logits


def classifier_scores(model: nn.Module, split: Split, num_classes: int, reference: torch.Tensor | None = None,
                      batch_size: int = 256) -> dict:
    """Accuracy and macro-F1 of `model` (PyTorch or OrtModel) on `split`; with `reference` logits, also the
    largest absolute logit difference and how many predictions differ from them."""
    logits = predict_logits(model, split, batch_size)
    m = classification_metrics(logits.argmax(1), split.y, num_classes)
    out = {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "samples": len(split)}
    if reference is not None:
        out["max_abs_diff"] = float((logits.double() - reference.double()).abs().max()) if len(split) else 0.0
        out["predictions_changed"] = int((logits.argmax(1) != reference.argmax(1)).sum())
    return out


def classifier_check(model: nn.Module, split: Split, num_classes: int, tolerance_pt: float = 0.1):
    """Validator: the ONNX model's accuracy on `split` equals the PyTorch model's within `tolerance_pt` points.

    The PyTorch logits are computed on the first call (once), after the export has checked that the
    model takes these inputs.
    """
    cache: list[torch.Tensor] = []

    def check(ort_model: OrtModel) -> dict:
        if not cache:
            cache.append(predict_logits(model, split, 256))
        ref = cache[0]
        torch_acc = classification_metrics(ref.argmax(1), split.y, num_classes).accuracy
        got = classifier_scores(ort_model, split, num_classes, ref)
        gap = 100 * abs(got["accuracy"] - torch_acc)
        if gap > tolerance_pt:
            raise SlimkitError(f"ONNX accuracy {100 * got['accuracy']:.2f}% differs from PyTorch's "
                               f"{100 * torch_acc:.2f}% by {gap:.2f} pt (> {tolerance_pt} pt) on {len(split)} samples; "
                               f"output logits max abs difference {got['max_abs_diff']:.3g}, "
                               f"{got['predictions_changed']} predictions changed")
        return {"metric": "accuracy", "pytorch": torch_acc, "onnx": got["accuracy"], **got}
    return check


@torch.no_grad()
def embedding_cosines(model: nn.Module, reference: nn.Module, tokenizer, texts: list[str],
                      batch_size: int = 32) -> torch.Tensor:
    """Per sentence, the cosine between `model`'s and `reference`'s mean-pooled embeddings."""
    from slimkit.distill.tasks import embed

    return F.cosine_similarity(embed(model, tokenizer, texts, batch_size), embed(reference, tokenizer, texts, batch_size),
                               dim=-1)


def encoder_check(model: nn.Module, tokenizer, texts: list[str], min_cosine: float = 0.999):
    """Validator: every held-out sentence's ONNX embedding has cosine >= `min_cosine` to PyTorch's."""
    if not texts:
        raise SlimkitError("encoder_check needs held-out sentences, got none")

    def check(ort_model: OrtModel) -> dict:
        cos = embedding_cosines(ort_model, model, tokenizer, texts)
        worst = int(cos.argmin())
        if not float(cos[worst]) >= min_cosine:
            raise SlimkitError(f"ONNX embedding of held-out sentence {worst} has cosine {float(cos[worst]):.5f} to "
                               f"PyTorch's (< {min_cosine}); output 'last_hidden_state' differs")
        return {"metric": "cosine", "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "sentences": len(texts)}
    return check
