"""Multi-process training under torchrun: process-group setup, rank helpers and data sharding.

slimkit does not launch processes; `torchrun` does and sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR. `setup()` joins that group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1, so the
same training script runs unchanged on one process or many.

Sharding uses DistributedSampler over a seeded permutation per epoch. Rank r takes positions
r, r + W, r + 2W, ... of that permutation, so at step k the W per-rank batches of size B/W together
hold exactly positions [kB, (k+1)B) - the same global batch a single process with batch B sees, and
DDP's gradient averaging then gives the same update as one process.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from slimkit.errors import SlimkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the torchrun process group if there is one; a single process gets DistInfo()."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise SlimkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process (for code outside the engine: reports, saving)."""
    return int(os.environ.get("RANK", "0")) == 0


def teardown(info: DistInfo, wait_for_peers: bool = True) -> None:
    """Leave the process group this process created.

    After a clean run every rank first waits at a barrier: a rank that destroys its gloo group while
    a peer still has a collective in flight can abort the whole launch at exit ("terminate called
    without an active exception"). After an error no barrier: the peers may never reach it.
    """
    if info.owns_group and dist.is_initialized():
        if wait_for_peers and info.enabled:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def per_rank_batch(global_batch: int, info: DistInfo) -> int:
    """B / W; the global batch must split evenly so every step averages the same samples."""
    if global_batch % info.world_size:
        raise SlimkitError(f"batch_size {global_batch} is the global batch and must be divisible by the "
                           f"{info.world_size} processes; choose a multiple of {info.world_size}")
    return global_batch // info.world_size


def epoch_batches(n: int, chunk: int, info: DistInfo, seed: int, epoch: int, shuffle: bool = True) -> list[torch.Tensor]:
    """This rank's sample-index batches of size `chunk` for one epoch (a pure function of seed and epoch).

    `chunk` is the per-rank micro-batch, global_batch / (world_size * grad_accum).

    DistributedSampler pads the permutation to a multiple of the world size by repeating its start,
    so a last, uneven global batch may see a few samples twice; choose sizes that divide evenly for
    an exact match with one process.
    """
    sampler = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(sampler)), dtype=torch.long)
    return list(order.split(chunk))


def _collective(t: torch.Tensor, op) -> torch.Tensor:
    """Run a collective on `t` in place; NCCL only takes CUDA tensors, so CPU ones travel through one."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        on_gpu = t.cuda()
        op(on_gpu)
        t.copy_(on_gpu.cpu())
    else:
        op(t)
    return t


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        _collective(t, lambda x: dist.all_reduce(x, op=dist.ReduceOp.SUM))
    return t


def from_main(value: float, info: DistInfo) -> float:
    """Rank 0's value on every rank (e.g. its clock, so a time budget stops all ranks at one step)."""
    if not info.enabled:
        return value
    return float(_collective(torch.tensor([value], dtype=torch.float64), lambda x: dist.broadcast(x, src=0)).item())
