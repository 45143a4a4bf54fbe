"""Data-parallel training under torchrun (NCCL on GPUs, gloo on CPU), on PyTorch's
DistributedDataParallel.

Every rank trains on its slice of each global batch. The method's loss forward runs
inside DDP, which averages the gradients bucket by bucket while the backward pass is still
running; attacks and the teacher use the plain modules, so an attack never starts a
gradient synchronisation. Rank 0 alone writes files. Outside torchrun everything here is a
no-op.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gacd.errors import ConfigError


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


class TrainedModules(nn.Module):
    """What DistributedDataParallel wraps: the method's child modules that hold trainable
    parameters (the student, trainable heads), with the method's training step as forward.

    The method itself is not a submodule, so its memory banks and samplers stay out of DDP
    (they are kept identical by the method's own all-gathers); the loss forward runs inside
    DDP.forward, which is what arms DDP's gradient hooks for the backward that follows.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(
            {
                name: module
                for name, module in method.named_children()
                if any(p.requires_grad for p in module.parameters())
            }
        )
        object.__setattr__(self, "method", method)
        covered = {id(p) for p in self.parts.parameters()}
        trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
        stray = [n for n, p in trainable if id(p) not in covered]
        if stray:
            raise ValueError(
                f"trainable parameters {stray} are not inside a child module of the method; "
                "data-parallel training averages the gradients of child modules only"
            )

    def forward(self, batch: Any) -> Any:
        return self.method.step(batch)


def data_parallel(method: nn.Module, device: torch.device) -> DistributedDataParallel:
    """Wrap `method`'s trained modules in DDP; calling the result runs `method.step`."""
    options: dict[str, Any] = {
        # Parameters a method never uses in its loss (GACD's classifier) receive no gradient;
        # the set is the same every step, which static_graph handles without a graph search.
        "static_graph": True,
    }
    # BatchNorm statistics are averaged at each epoch's end instead of rank 0's being
    # broadcast before every forward (SyncBatchNorm keeps them equal on its own).
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False  # newer torch's name (still syncs at init)
    else:
        options["broadcast_buffers"] = False
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        options["device_ids"] = [index]
    return DistributedDataParallel(TrainedModules(method), **options)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """With several ranks, turn `model`'s BatchNorm layers into SyncBatchNorm (statistics of
    the global batch); with one process, leave it as it is. The weights keep their names, so
    exported models load into the plain architecture."""
    if world_size() == 1:
        return model
    if device.type != "cuda":
        raise ConfigError(
            f"sync_bn: PyTorch's SyncBatchNorm runs on GPUs only, this run trains on {device}; "
            "set sync_bn=false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (memory banks, Z, BatchNorm statistics) to every
    rank: all ranks start from the same state."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def average_batchnorm_statistics(module: nn.Module) -> None:
    """Average the BatchNorm running statistics over ranks, so every rank holds the same
    model. Each rank's running means follow its own slice of the batch; their average is
    the running mean of the global batches (running variances are averaged alike). Layers
    whose statistics already agree (SyncBatchNorm, or a frozen network) keep them exactly:
    the deviations from rank 0 are what is averaged."""
    if not is_distributed():
        return
    stats = [
        buffer
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for buffer in (m.running_mean, m.running_var)
        if buffer is not None
    ]
    if not stats:
        return
    with torch.no_grad():
        flat = torch.cat([s.reshape(-1).double() for s in stats])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        deviation = flat - reference
        dist.all_reduce(deviation)
        flat = reference + deviation / world_size()
        offset = 0
        for s in stats:
            s.copy_(flat[offset : offset + s.numel()].view_as(s))
            offset += s.numel()


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


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over ranks (in float64: counts stay exact)."""
    if not is_distributed() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    sums = sum_across_ranks([values[k] for k in keys])
    return {k: v / world_size() for k, v in zip(keys, sums, strict=True)}
