"""Data-parallel training under torchrun (NCCL on GPUs, gloo on CPU).

Each rank trains on its shard of every epoch's batches, gradients are averaged with an
all-reduce after backward, and rank 0 alone writes files. Outside torchrun everything here
is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes; return the device this rank should use."""
    if not launched_by_torchrun() or is_distributed():
        return device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """All-reduce and average the gradients of `parameters` across ranks (one flat buffer)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module, parameters: bool = False) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, memory banks, Z) - and parameters if
    asked - to every rank."""
    if not is_distributed():
        return
    tensors = list(module.buffers()) + (list(module.parameters()) if parameters else [])
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from all ranks along dim 0 (rank order)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}
