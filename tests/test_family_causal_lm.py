"""The causal-LM family through `slimkit compress`: a tiny random-init Llama with a byte-level
tokenizer, saved with save_pretrained, compressed from the command line, reloaded with plain
from_pretrained and checked against what compress returned; the cutter's surgery with a KV cache;
the top-k teacher outputs KD reads; and the bad inputs an LM user meets, one line each."""

import inspect
import json

import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli.main import app

pytest.importorskip("transformers")

QUICK = ["--search-steps", "2", "--recover-steps", "2", "--keep-slower", "--seq-len", "32", "--train-n", "32",
         "--floor", "ppl<=100x", "--target", "latency=0.95x"]
WORDS = ("Emma Woodhouse handsome clever and rich with a comfortable home and happy disposition seemed to unite "
         "some of the best blessings of existence and had lived nearly twenty-one years in the world with very "
         "little to distress or vex her").split()


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_lm(layers: int = 4):
    """A random-init Llama over 256 byte tokens (2 KV groups of 2 heads), and a byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    inner = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token=sorted(alphabet)[0])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    model, tok = tiny_lm()
    folder = tmp_path_factory.mktemp("lm") / "llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (900,), generator=g).tolist()]
    path = tmp_path_factory.mktemp("text") / "book.txt"
    path.write_text(" ".join(words) + "\n", encoding="utf-8")  # ~5 KB: ~160 windows of 32 byte tokens
    return path


def test_compress_an_lm_folder_from_the_cli_reloads_with_from_pretrained(lm_folder, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from slimkit.distill import causal_lm, evaluate
    from slimkit.families import causal_lm as family
    from slimkit.families.base import Source

    out = tmp_path / "run"
    res = run_cli("compress", lm_folder, "--data", text_file, "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "causal_lm" and report["metric"] == "perplexity" and report["cutter"] == "decoder"
    assert "decode ms per token at batch 1 with the KV cache" in report["timing"] and "2 threads" in report["timing"]
    assert len(report["timing_beside"]["prefill_ms"]) == 2
    assert "book.txt" in report["data"] and "non-overlapping windows of 32" in report["data"] and "seed 0" in report["data"]
    assert report["candidates"] and all(c["removed"] or c["ratio"] > 0 for c in report["candidates"])
    assert report["settings"]["max_blocks"] == 8 and report["settings"]["batch_size"] == 8
    assert "lm_head" in report["kept_intact"]["modules"]
    assert any("Wanda" in n for n in report["notes"]) and "Notes" in (out / "report.md").read_text()
    # plain from_pretrained, with the tokenizer beside it
    plain = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True).eval()
    chosen = report["candidates"][report["chosen"]]
    assert plain.config.num_hidden_layers == 4 - chosen["blocks"]
    assert (out / "model" / "tokenizer.json").is_file()
    # the reloaded model scores the report's validation perplexity on the same windows
    src = Source(plain, "huggingface", task=causal_lm(), processor=tiny_lm()[1])
    val = family.prepare(src, str(text_file), seed=0, n_train=32, seq_len=32).splits["val"]
    assert evaluate(plain, val, causal_lm())["perplexity"] == pytest.approx(report["result"]["val"]["perplexity"],
                                                                            rel=1e-4)
    with torch.no_grad():
        gen = plain.generate(val["input_ids"][:1, :8], max_new_tokens=6, do_sample=False)
    assert gen.shape == (1, 14)


def test_decoder_cutter_removes_layers_and_decodes_with_a_kv_cache():
    from slimkit.families.causal_lm import DecoderCutter, DecodeTimer

    model, _ = tiny_lm()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    cutter = DecoderCutter()
    assert cutter.blocks(model) == ["model.layers.1", "model.layers.2", "model.layers.3"]
    infl = cutter.influences(model, [{"input_ids": ids}])
    assert set(infl) == set(cutter.blocks(model)) and all(v > 0 for v in infl.values())
    short = cutter.remove(model, ["model.layers.2", "model.layers.1"])
    assert len(short.model.layers) == 2 and short.config.num_hidden_layers == 2
    assert [l.self_attn.layer_idx for l in short.model.layers] == [0, 1]
    assert len(model.model.layers) == 4 and model.model.layers[3].self_attn.layer_idx == 3  # the original is whole
    assert short.model.layers[1].mlp.up_proj.weight is model.model.layers[3].mlp.up_proj.weight  # shared, not copied
    name = "cache" if "cache" in inspect.signature(short.forward).parameters else "past_key_values"
    with torch.no_grad():  # decoding on the cache gives what a full forward gives
        full = short(input_ids=ids[:1], use_cache=False).logits[0, -1]
        out = short(input_ids=ids[:1, :-1], use_cache=True)
        step = short(input_ids=ids[:1, -1:], use_cache=True, **{name: getattr(out, name)}).logits[0, -1]
    assert torch.allclose(full, step, atol=1e-5)
    cut, kept = cutter.cut(short, 0.5, [{"input_ids": ids}])
    assert cut.config.intermediate_size == 32 and kept["model.layers.0.mlp"] == [32, 64]
    assert all(l.mlp.up_proj.out_features == 32 and l.mlp.down_proj.in_features == 32 for l in cut.model.layers)
    assert short.config.intermediate_size == 64  # cut from a copy
    shapes, _ = cutter.cut(model, 0.25, [], exact=False)
    assert shapes.config.intermediate_size == 48
    timer = DecodeTimer(prompt_len=8, tokens=4, rounds=2, min_runs=4)
    ms = timer([model, cut])
    assert len(ms) == 2 and all(t > 0 for t in ms) and len(timer.beside["prefill_ms"]) == 2


def test_kd_for_an_lm_reads_the_teachers_top_k():
    from slimkit.compression.recovery import LM_TOP_K, recovery_teacher, terms_for
    from slimkit.compression.run import make_settings
    from slimkit.distill import causal_lm

    model, _ = tiny_lm(2)
    windows = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(2))
    s = make_settings("latency=0.5x", "ppl<=1.25x", 0, None, {"batch_size": 4})
    out = recovery_teacher(model, {"input_ids": windows}, causal_lm(), s, progress=False)
    assert out.topk and tuple(out.values.shape) == (6, 16, LM_TOP_K) and out.values.shape[-1] < 256
    assert [t.kind for t in terms_for(causal_lm(), s)] == ["kd", "ce"]
    assert [t.weight for t in terms_for(causal_lm(), s)] == [1.0, 1.0]


@pytest.mark.parametrize("args, says", [
    (["--floor", "cosine>=0.95"], "does not measure"),
    (["--task", "classification"], "contradicts"),
    (["--data", "no-such-book.txt"], "neither a built-in"),
    (["--target", "sparsity=0.5"], "zeros"),
])
def test_bad_inputs_for_an_lm_are_one_line_and_write_nothing(lm_folder, text_file, tmp_path, args, says):
    data = [] if "--data" in args else ["--data", text_file]
    res = run_cli("compress", lm_folder, *data, "--out", tmp_path / "run", "--search-steps", "2", *args)
    assert res.exit_code != 0 and says in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_text_windows_do_not_overlap_and_val_test_are_capped(text_file, monkeypatch):
    from slimkit.distill import causal_lm
    from slimkit.families import causal_lm as family
    from slimkit.families.base import Source

    model, tok = tiny_lm(1)
    src = Source(model, "huggingface", task=causal_lm(), processor=tok)
    monkeypatch.setattr(family, "EVAL_TOKENS", 64)  # 8 windows of 8 tokens
    prepared = family.prepare(src, str(text_file), seed=3, n_train=20, seq_len=8)
    s = prepared.splits
    assert s["train"]["input_ids"].shape == (20, 8) and s["val"]["input_ids"].shape == (8, 8)
    rows = [tuple(r) for k in ("train", "val", "test") for r in s[k]["input_ids"].tolist()]
    assert len(set(rows)) == len(rows)  # no window in two splits
    assert "seed 3" in prepared.how and "first 20 training windows" in prepared.how and "first 8 windows" in prepared.how
    again = family.prepare(src, str(text_file), seed=3, n_train=20, seq_len=8).splits
    assert torch.equal(again["val"]["input_ids"], s["val"]["input_ids"])  # the seed decides


def test_a_held_out_text_gives_val_and_test_and_all_of_data_trains(text_file, tmp_path):
    from slimkit.data.text import text_windows
    from slimkit.distill import causal_lm
    from slimkit.families import causal_lm as family
    from slimkit.families.base import Source

    model, tok = tiny_lm(1)
    src = Source(model, "huggingface", task=causal_lm(), processor=tok)
    held = tmp_path / "held.txt"
    rng = __import__("random").Random(0)  # no two windows alike, so a window's text names it
    held.write_text("".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(3000)))
    prepared = family.prepare(src, str(text_file), seed=1, seq_len=8, eval_spec=str(held))
    s = prepared.splits
    whole, _ = text_windows(tok, str(text_file), 8)
    assert torch.equal(s["train"]["input_ids"], whole)  # every window of --data trains
    book, _ = text_windows(tok, str(held), 8)
    rows = {tuple(r) for r in book.tolist()}
    val, test = ([tuple(r) for r in s[k]["input_ids"].tolist()] for k in ("val", "test"))
    assert set(val) <= rows and set(test) <= rows and not set(val) & set(test)
    assert "held.txt" in prepared.how and "half and half with seed 1" in prepared.how
    res = run_cli("compress", str(tmp_path / "nope"), "--eval-data", "emma", "--out", str(tmp_path / "run"))
    assert res.exit_code != 0
    res = run_cli("compress", "smollm2", "--eval-data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run"))
    assert res.exit_code == 2 and "missing.txt" in res.output and not (tmp_path / "run").exists()
