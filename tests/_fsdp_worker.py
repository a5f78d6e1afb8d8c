"""A tiny causal-LM KD run (Llama student and teacher, live teacher) for the FSDP tests.

Run plainly (one process, parallel "ddp") or under torchrun (parallel "fsdp"). Every rank prints
"RANK r STEP n PID p" after each optimizer step, so a parent can kill -9 one rank at a chosen step.
Rank 0 writes a JSON summary (the global mean loss of every step, a digest of the final weights)
and the final full weights as `--out` with the suffix .safetensors.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimkit.distill import CacheConfig, CheckpointConfig, Distiller, TrainConfig, causal_lm, ce, hint, kd  # noqa: E402
from slimkit.distill import ddp  # noqa: E402

VOCAB, SEQ, WINDOWS, BATCH = 96, 16, 80, 4  # 20 optimizer steps per epoch


def tiny_llama(layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)  # as SmolLM2: the head is the embedding
    return LlamaForCausalLM(cfg)


def windows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (WINDOWS, SEQ), generator=torch.Generator().manual_seed(7))


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(weights.items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", default="ddp")
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--hint", action="store_true", help="add a hint term (an adapter on the student's final norm)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher, student = tiny_llama(3, 1), tiny_llama(2, 0)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=3e-3, warmup_steps=2, seed=0, amp="off", parallel=args.parallel)
    ckpt = CheckpointConfig(args.ckpt_dir, every_steps=args.every) if args.ckpt_dir else None
    terms = [kd(1.0, 2.0), ce(0.5)] + ([hint("model.norm", "model.norm", 0.5)] if args.hint else [])
    d = Distiller(teacher, student, terms, cfg, checkpoint=ckpt, cache=CacheConfig(mode="off"),
                  task=causal_lm())
    losses: list[float] = []
    rank = d.dist.rank

    def on_step(step: int) -> None:
        loss = ddp.all_reduce_sum(torch.tensor([d.last_loss], dtype=torch.float64), d.dist)
        losses.append(float(loss) / d.dist.world_size)
        # one write(2) of under PIPE_BUF bytes is atomic: the two ranks' lines never interleave in the pipe
        os.write(1, f"RANK {rank} STEP {step} PID {os.getpid()}\n".encode())
        if args.step_sleep:
            time.sleep(args.step_sleep)

    val = {"input_ids": torch.randint(0, VOCAB, (6, SEQ), generator=torch.Generator().manual_seed(8))}
    history = d.fit({"input_ids": windows()}, val=val, progress=False, on_step=on_step)
    full = d.full_weights if args.parallel == "fsdp" else student.state_dict()
    if rank == 0:
        from safetensors.torch import save_file

        out = Path(args.out)
        save_file({k: v.detach().clone() for k, v in full.items()}, str(out.with_suffix(".safetensors")))
        out.write_text(json.dumps({"losses": losses, "digest": digest(full), "steps": d.steps_done,
                                   "resumed_from_step": d.resumed_from_step, "world_size": d.dist.world_size,
                                   "metrics": history[-1].metrics}))


if __name__ == "__main__":
    main()
