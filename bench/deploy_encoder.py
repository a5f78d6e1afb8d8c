"""MiniLM rows of bench/deploy.py: dense and pruned all-MiniLM-L6-v2, fp32 and dynamic int8, in ONNX Runtime.

The pruned model is what `slimkit prune minilm --ffn 0.5 --heads 0.25` builds before its
distillation: FFN neurons and heads removed by activation-aware importance, each layer's output
projections refitted by least squares on calibration sentences (Emma). It is not distilled here, to
keep the benchmark short; its cosine to the dense model is reported for context. Every exported
model is checked against its own PyTorch model (mean-pooled embedding cosine on held-out Pride and
Prejudice sentences), and timed at batch 1 on inputs of exactly 32 and 128 tokens.
"""

import argparse
import copy
from pathlib import Path

import torch

from slimkit.export import OrtModel, embedding_cosines, encoder_check, quantize_onnx, to_onnx
from slimkit.llm import default_sentences, fidelity, load_encoder, prune_encoder
from slimkit.measure import count_macs

from ort_timing import time_onnx_in_fresh_process
from run_clock import stage

SEQ_LENS = (32, 128)


def minilm_rows(a: argparse.Namespace, out: Path) -> list[dict]:
    teacher, tok = load_encoder("minilm")
    texts, held = default_sentences(max(a.minilm_calib, 2), a.minilm_held, a.seed)
    pruned = copy.deepcopy(teacher)
    with stage(f"minilm: prune -50% FFN, -25% heads, refit on {a.minilm_calib} sentences (no distillation)"):
        prune_encoder(pruned, tok, texts[:a.minilm_calib], ffn_ratio=0.5, head_ratio=0.25)
        to_dense = fidelity(pruned, teacher, tok, held)

    def enc(batch: list[str], **kw) -> dict[str, torch.Tensor]:
        return dict(tok(batch, return_tensors="pt", padding=True, truncation=True, **kw))

    long = " ".join(held)
    settings = {f"seq {n}": enc([long], max_length=n) for n in SEQ_LENS}
    for name, x in settings.items():
        if x["input_ids"].shape[1] != int(name.split()[1]):
            raise SystemExit(f"held-out text too short for {name}: {x['input_ids'].shape[1]} tokens; raise --minilm-held")
    info, files = {}, []
    with stage("minilm: ONNX export (checked: embedding cosine), dynamic int8"):
        for name, m in (("dense", teacher), ("pruned", pruned)):
            res = to_onnx(m, enc(held[:2]), out / f"minilm_{name}.onnx", overwrite=True, check_inputs=[enc(held[2:5])],
                          validate=encoder_check(m, tok, held))
            q = quantize_onnx(res.model_bytes, out / f"minilm_{name}.int8.onnx", "dynamic", overwrite=True)
            cos8 = embedding_cosines(OrtModel(q.model_bytes), m, tok, held)
            info[name] = {"macs": count_macs(m, settings["seq 128"]), "cos": res.checks["mean_cosine"],
                          "min_cos": res.checks["min_cosine"], "mb": res.file_bytes / 1e6, "exporter": res.exporter,
                          "cos8": float(cos8.mean()), "min_cos8": float(cos8.min()), "mb8": q.file_bytes / 1e6}
            files += [res.path, q.path]
    rounds = max(2, a.rounds_32 // 2)
    with stage(f"minilm: ONNX Runtime timing at {', '.join(settings)}, batch 1, {a.passes} fresh processes"):
        ort, _ = time_onnx_in_fresh_process(files, settings, {k: rounds for k in settings}, a.threads, a.passes)
    return _rows(info, ort, to_dense.mean_cosine)


def _rows(info: dict, ort: list[dict], to_dense: float) -> list[dict]:
    """MiniLM rows; eager PyTorch is not timed (the fresh-process timer rebuilds slimkit checkpoints only, and
    in the benchmark's own process eager times here were off by up to 10x)."""
    d, rows = info["dense"], []
    keys = [f"seq {n}" for n in SEQ_LENS]
    for i, (name, v) in enumerate(info.items()):
        macs_x = d["macs"] / v["macs"]
        o32, o8 = ort[2 * i], ort[2 * i + 1]
        s_ort = [ort[0][k] / o32[k] for k in keys]
        eff = (lambda s, mx=macs_x: s / mx) if i else (lambda s: None)
        notes = [f"{v['exporter']} exporter, min cosine {v['min_cos']:.5f}"]
        if i:
            notes.append(f"pruned, refit, NOT distilled: cosine to dense MiniLM {to_dense:.3f}")
            notes += [f"not faster than dense in ONNX Runtime at {k} ({so:.2f}x)" for k, so in zip(keys, s_ort) if so <= 1]
        variant = "pruned" if i else "dense"
        rows.append({"model": "minilm", "variant": variant, "precision": "fp32", "mmacs": v["macs"] / 1e6,
                     "macs_x": macs_x, "metric": f"cos {v['cos']:.5f}", "ref": "PT 1", "delta": None, "mb": v["mb"],
                     "ort@1": o32[keys[0]], "ort@2": o32[keys[1]], "ort_eff@1": eff(s_ort[0]),
                     "ort_eff@2": eff(s_ort[1]), "int8_x@2": None,
                     "note": "; ".join(notes)})
        notes = [f"{o32[keys[0]] / o8[keys[0]]:.2f}x fp32 at {keys[0]}; min cosine {v['min_cos8']:.4f}"]
        if v["cos8"] < 0.99:
            notes.append(f"int8 keeps mean cosine {v['cos8']:.4f} (< 0.99): too much")
        rows.append({"model": "minilm", "variant": variant, "precision": "int8 dynamic", "mmacs": v["macs"] / 1e6,
                     "macs_x": macs_x, "metric": f"cos {v['cos8']:.5f}", "ref": f"fp32 {v['cos']:.5f}", "delta": None,
                     "mb": v["mb8"], "ort@1": o8[keys[0]], "ort@2": o8[keys[1]],
                     "int8_x@2": o32[keys[1]] / o8[keys[1]], "note": "; ".join(notes)})
    return rows
