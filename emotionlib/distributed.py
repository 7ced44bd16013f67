"""Data-parallel training over several processes: DistributedDataParallel with gloo (CPU) or NCCL (CUDA).

    torchrun --nproc_per_node=8 -m emotionlib train --profile paper --data /data/FI --out runs/paper-8gpu

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE and LOCAL_RANK; `fit` reads them
through `init`. Every rank trains on its own whole batches - PairBatchSampler(num_replicas, rank) hands out
batches[rank::num_replicas], so the contrastive pairs of Eq. 3-5 stay inside one batch, and every rank gets the
same number of batches - and DDP averages the gradients, so the ranks take identical optimiser steps.
`train.batch_size` is per process: the global batch is world_size times it. Rank 0 alone writes the run folder and
evaluates; the others wait at barriers. Outside torchrun everything here is a no-op (world size 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

from .errors import ConfigError, EmotionLibError
from .utils import resolve_device

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in the job. `Dist()` is the single-process case, where every method is a no-op."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # init_process_group was called here, so close() tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this rank: `train.device`, with CUDA narrowed to this process's own GPU."""
        dev = resolve_device(name)
        if self.enabled and dev.type == "cuda":
            dev = torch.device("cuda", self.local_rank)  # one GPU per process, as torchrun's LOCAL_RANK says
            torch.cuda.set_device(dev)
        return dev

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.local_rank])
            else:
                torch.distributed.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only (writing files, evaluating); every rank returns its result. An error on rank 0
        is raised on every rank, so that no rank is left waiting at a barrier that will never come."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001  re-raised below, after the other ranks have heard of it
                kind = type(e) if isinstance(e, EmotionLibError) else RuntimeError
                error = (kind, str(e).splitlines()[0] if str(e) else type(e).__name__)
                self.broadcast((None, error))
                raise
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error[0](f"{error[1]} (on rank 0)")
        return result

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums over the ranks (e.g. an epoch's loss sums and image counts)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel over the parameters that require grad right now. Each training
        stage trains other parameters (Sec. 3.2), so each stage wraps afresh: DDP fixes its parameter set (and
        its gradient buckets) when it is built."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(module.parameters()).device
        return DDP(
            module,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def check_in_sync(self, model: nn.Module, device: torch.device) -> None:
        """Raise if the ranks' parameters differ: DDP's identical steps keep them bit-identical, so any difference
        is a bug (a rank that skipped a batch, a stage wrapped with stale parameters) and not rounding."""
        if not self.enabled:
            return
        with torch.no_grad():
            local = (
                torch.stack(
                    [
                        torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                        for p in model.parameters()
                    ]
                )
                .reshape(-1)
                .to(device)
            )
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, local)
        bad = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
        if bad:
            raise EmotionLibError(
                f"rank(s) {bad} hold other parameters than rank 0 after DistributedDataParallel "
                "training; this is a bug, please report it"
            )

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def init(device: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """This process's Dist: the process group torchrun asked for (WORLD_SIZE > 1), an existing one (a caller that
    initialised torch.distributed itself), or the single-process no-op."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Dist(world, rank, local, torch.distributed.get_backend(), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"train.device={device!r} resolves to {dev.type}; DistributedDataParallel here runs on "
            "CUDA (NCCL) or the CPU (gloo)"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s); start "
                "at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Dist(world, rank, local, backend, owns_group=True)


__all__ = ["Dist", "init"]
