"""Distributed data-parallel training: the processes `torchrun` starts, and what they share.

    torchrun --nproc-per-node 2 -m poetgen train corpus.txt …

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE in the
environment; `session()` joins them into a process group (gloo on CPU, NCCL on CUDA). Training then
differs from one process in these ways only (see train.train):

- data: the config's `batch_size` streams are divided among the ranks, rank r owning streams
  r·B/W … (r+1)·B/W − 1 (`World.streams`), so the global batch is what the config says whatever
  the number of processes, and a step of W ranks computes the step one process would compute on
  the whole batch (the mean gradient of equal shares is the mean gradient), up to float rounding;
- gradients: DistributedDataParallel averages them across ranks during backward;
- decisions: every step, the loss (`mean`), then rank 0's clock and decisions (the run is
  finished, an evaluation is due) and any rank's stop request (`agree`) are shared, so every
  rank takes the same learning rate and evaluates and stops at the same step, and a Ctrl-C or
  SIGTERM reaching any one rank stops them all;
- checkpoints: rank 0 alone evaluates, writes checkpoints and metrics.csv, and reports progress,
  then tells the others its clock (`from_main`). The state of every stream and every rank's RNG
  state are gathered to it first (`gather_state`), so `last` holds all a resume needs, in the
  layout of a one-process run.

A process not started by torchrun (or started with one process) takes none of these paths:
`current()` is then rank 0 of 1, and every function here returns its input unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from poetgen.errors import ConfigError


# How long a rank waits for the others at a collective before the run fails. Rank 0 evaluates
# alone while the others wait at the next step, so this bounds a validation pass. Set for gloo
# and NCCL alike.
WAIT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the processes training one model."""

    rank: int = 0  # 0 .. size-1; rank 0 evaluates, saves and reports
    size: int = 1  # processes in all (torchrun's WORLD_SIZE)
    local_rank: int = 0  # rank on this machine: which GPU it drives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def streams(self, batch_size: int) -> range:
        """The streams (batch columns) this rank trains on: an equal, contiguous share."""
        if batch_size % self.size:
            raise ConfigError(f"batch_size {batch_size} cannot be shared equally by {self.size} "
                              f"processes; use a multiple of {self.size} (the global batch is "
                              "divided among them)")
        share = batch_size // self.size
        return range(self.rank * share, (self.rank + 1) * share)


def current() -> World:
    """The world of the process group this process belongs to (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device_type: str) -> Iterator[World]:
    """Join the process group torchrun set up (a no-op for a single process), and leave it after.

    `device_type` is where training will run: NCCL for "cuda", gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield World()
        return
    if device_type == "mps":
        raise ConfigError("distributed training runs on CPUs (gloo) or CUDA GPUs (NCCL), not MPS; "
                          "use --device cpu or run one process")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=WAIT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: its own GPU on a machine with several."""
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


def data_parallel(model: nn.Module, world: World) -> nn.Module:
    """`model`, wrapped in DistributedDataParallel when there are several ranks.

    DDP broadcasts rank 0's weights and buffers to every rank here, and averages gradients during
    backward. Buffers (the poem-start state) are not synchronised at every forward: training does
    not use them, and only rank 0 sets and saves them, at evaluation.
    """
    if world.size == 1:
        return model
    device = model.start_h.device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _several() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (the loss of the global batch); itself for one."""
    if not _several():
        return value
    total = value.detach().clone()
    dist.all_reduce(total)  # gloo has no AVG: sum, then divide
    return total / dist.get_world_size()


def agree(world: World, decided: tuple[float, bool, bool], stop: bool, device: torch.device
          ) -> tuple[tuple[float, bool, bool], bool]:
    """Rank 0's (elapsed time, run finished, evaluation due), and whether any rank was asked to
    stop: the same on every rank. One all-reduce per step.

    Rank 0's clock decides the time budget, the learning rate and when to evaluate, so no rank
    trains on alone after another has stopped, or waits for one that has.
    """
    if world.size == 1:
        return decided, stop
    shared = torch.tensor([*(float(v) for v in decided), float(stop)], dtype=torch.float64,
                          device=device)
    if not world.is_main:
        shared[:-1] = 0.0  # the sum is then rank 0's
    dist.all_reduce(shared)
    elapsed, finished, due, stops = shared.tolist()
    return (elapsed, finished > 0, due > 0), stops > 0


def from_main(world: World, value: float, device: torch.device) -> float:
    """Rank 0's `value`, on every rank (its clock after it evaluated alone)."""
    if world.size == 1:
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared[0])


def gather_state(world: World, state: tuple[torch.Tensor, ...]
                 ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Every stream's carried state, each entry with all streams in dim 1 in stream order, and
    every rank's CPU RNG state, (size, n) in rank order: what `last` saves. Every rank must call
    it (a collective)."""
    rng = torch.get_rng_state()
    if world.size == 1:
        return state, rng.unsqueeze(0)
    device = state[0].device
    gathered = []
    for part in (*state, rng.to(device)):
        pieces = [torch.empty_like(part) for _ in range(world.size)]
        dist.all_gather(pieces, part.contiguous())
        gathered.append(pieces)
    *entries, rngs = gathered
    return tuple(torch.cat(p, dim=1) for p in entries), torch.stack(rngs).cpu()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
