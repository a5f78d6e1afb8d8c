"""SmolLM2-135M depth-cut KD as one torchrun launch, for bench/distill.py part 7 (DDP against FSDP).

The teacher is SmolLM2 (or its first --layers blocks), the student the same with --cut of its
blocks removed (as `slimkit prune smollm2 --blocks` does), its embeddings frozen as in the recovery recipe.
The teacher runs live (no cache) so that under FSDP it is sharded too. Rank 0 writes a JSON
summary: the global loss of every step, tokens/s of the training steps, and per rank the bytes of
parameters + gradients + optimizer state it holds (FSDP: its local shards), and its peak RSS.

    torchrun --nproc-per-node 2 bench/distill_lm_worker.py --parallel fsdp --steps 8 --out r.json
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimkit.distill import CacheConfig, Distiller, TrainConfig, causal_lm, ce, ddp, kd  # noqa: E402


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this rank holds for `t`: the local shard of a DTensor, else the whole tensor."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def held_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Parameters, gradients and AdamW state this rank holds between steps. Gradients and AdamW's
    two moments have the size of the trainable parameters (local shards under FSDP), in fp32."""
    params = sum(local_bytes(p) for p in model.parameters())
    grads = sum(local_bytes(p) for p in model.parameters() if p.requires_grad)
    return {"params": params, "grads": grads, "optimizer": 2 * grads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", default="ddp")
    ap.add_argument("--layers", type=int, default=0, help="teacher blocks kept (0 = all 30)")
    ap.add_argument("--cut", type=int, default=8, help="blocks removed from the teacher to make the student")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="global batch (windows)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import copy

    from slimkit.llm import calibration_windows, load_causal_lm, remove_layers

    teacher, tok = load_causal_lm("smollm2")
    n = len(teacher.model.layers)
    if args.layers:
        remove_layers(teacher, list(range(args.layers, n)))
        n = args.layers
    student = copy.deepcopy(teacher)
    remove_layers(student, list(range(n - 1 - args.cut, n - 1)))  # the last blocks but the final one
    for module in student.modules():
        if isinstance(module, torch.nn.Embedding):
            module.weight.requires_grad_(False)
    windows = calibration_windows(tok, "emma", args.batch * args.steps, args.seq_len, 0)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-4, weight_decay=0.0, warmup_steps=0, grad_clip=1.0,
                      seed=0, amp="off", parallel=args.parallel)
    d = Distiller(teacher, student, [kd(1.0, 1.0), ce(1.0)], cfg, cache=CacheConfig(mode="off"), task=causal_lm())
    student_params = sum(p.numel() for p in student.parameters())
    losses: list[float] = []
    marks: list[float] = []
    per_rank: list = []

    def on_step(step: int) -> None:
        loss = ddp.all_reduce_sum(torch.tensor([d.last_loss], dtype=torch.float64), d.dist)
        losses.append(float(loss) / d.dist.world_size)
        marks.append(time.perf_counter())
        if d.dist.is_main:
            print(f"step {step}/{args.steps}: loss {losses[-1]:.4f}", flush=True)
        if step == args.steps:  # every rank's figures, while the engine's process group is up
            mine = {**held_bytes(d.bundle), "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
            gathered = [None] * d.dist.world_size
            if d.dist.enabled:
                torch.distributed.all_gather_object(gathered, mine)
            else:
                gathered = [mine]
            per_rank.extend(gathered)

    d.fit({"input_ids": windows}, progress=False, on_step=on_step)
    if d.dist.is_main:
        steps_timed = len(marks) - 1  # from the end of step 1: lazy set-up and the first gather left out
        tokens = steps_timed * args.batch * args.seq_len
        Path(args.out).write_text(json.dumps({
            "parallel": args.parallel, "world_size": d.dist.world_size, "losses": losses,
            "tokens_per_s": tokens / (marks[-1] - marks[0]) if steps_timed > 0 else float("nan"),
            "per_rank": per_rank, "teacher_layers": n, "student_layers": len(student.model.layers),
            "student_params": student_params,
        }))


if __name__ == "__main__":
    main()
