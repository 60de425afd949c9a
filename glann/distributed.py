"""Multi-process training on torch.distributed (torchrun): who am I, which images are mine,
and the few collectives GLANN needs.

Each rank owns a strided shard of the images and of their codes (codes never need syncing);
G and T gradients are all-reduced by DistributedDataParallel. Checkpoints gather the
sharded rows so that a checkpoint has the single-process layout whatever the world size.
With one process every helper here is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Global indices of this rank's rows: rank, rank + world, ... (sizes differ by at most one)."""
        return torch.arange(min(self.rank, n), n, self.world, device=device)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        return self.sum(1.0 if flag else 0.0) > 0

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every rank, in rank order (on x's device: a CPU
        tensor, such as an RNG state, travels through the GPU under nccl, which has no CPU path)."""
        if not self.active:
            return x
        y = x.contiguous().to(self._device())
        parts = [torch.empty_like(y) for _ in range(self.world)]
        dist.all_gather(parts, y)
        return torch.cat(parts).to(x.device)

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Rows sharded by `shard(n)` on each rank -> the full n-row tensor, in global order."""
        if not self.active:
            return local
        width = -(-n // self.world)
        pad = torch.zeros((width,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
        pad[: local.shape[0]] = local
        parts = self.all_gather_cat(pad.unsqueeze(0))
        full = torch.empty((n,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
        for r, part in enumerate(parts):
            rows = torch.arange(min(r, n), n, self.world, device=local.device)
            full[rows] = part[: len(rows)]
        return full

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers and parameters of `module`, copied in place on every rank."""
        if not self.active:
            return
        for t in list(module.buffers()) + list(module.parameters()):
            y = t.data.to(self._device())
            dist.broadcast(y, 0)
            t.data.copy_(y)

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def current() -> Dist:
    """The process group this process is in (rank 0 of 1 when none)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def init_from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1); nccl for CUDA, gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current()


class ShardedState:
    """state_dict()/load_state_dict() of a module or optimiser whose tensors are row shards.

    Saving gathers every tensor whose first dimension is the local row count into the full
    n-row tensor (global order); loading slices full tensors back to this rank's rows. A
    checkpoint therefore looks the same whether 1 or K processes wrote it.
    """

    def __init__(self, obj: Any, d: Dist, n: int, n_local: int):
        self.obj, self.d, self.n, self.n_local = obj, d, n, n_local

    def state_dict(self) -> Any:
        return _map_tensors(self.obj.state_dict(),
                            lambda t: self.d.gather_rows(t, self.n) if _is_rows(t, self.n_local) else t)

    def load_state_dict(self, state: Any) -> None:
        rows = self.d.shard(self.n)
        self.obj.load_state_dict(_map_tensors(state, lambda t: t[rows.to(t.device)] if _is_rows(t, self.n) else t))


def _is_rows(t: Any, n: int) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == n


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj
