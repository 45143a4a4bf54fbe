"""Memory bank of teacher embeddings and class-aware negative sampling, both on-device.

Row i of the bank belongs to training sample i (its dataset index). Reading (`rows`) and
writing (`update`) are separate calls so that attacks and evaluation can score against the
bank without ever changing it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Raw draws for the negative sampler are uniform int64 in [0, 2**62); see `sample`.
_RAW_RANGE = 2**62


class MemoryBank(nn.Module):
    """`embeddings` [n_data, dim]: one unit-norm embedding per training sample.

    Initialised to random directions (Gaussian rows, normalised: uniform on the sphere),
    updated by `B[i] <- normalize(m B[i] + (1 - m) t_i)`. The bank is a buffer, so it moves
    with `.to(device)` and travels in `state_dict` (checkpoints resume with the bank).
    """

    embeddings: Tensor

    def __init__(
        self,
        n_data: int,
        dim: int = 128,
        *,
        momentum: float = 0.5,
        generator: torch.Generator | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if n_data <= 0 or dim <= 0:
            raise ValueError(f"n_data and dim must be positive, got {n_data}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.eps = eps
        # Drawn on the CPU so a CPU generator reproduces the same bank on any device.
        init = torch.randn(n_data, dim, generator=generator, dtype=torch.float32)
        self.register_buffer("embeddings", F.normalize(init, dim=1, eps=eps))

    @property
    def n_data(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def rows(self, indices: Tensor) -> Tensor:
        """Read rows: indices of any shape [...] -> a new tensor [..., dim]; never writes."""
        idx = indices.to(device=self.embeddings.device, dtype=torch.long)
        # index_select copies, so later updates cannot change what the caller holds.
        out = self.embeddings.index_select(0, idx.reshape(-1))
        return out.view(*idx.shape, self.dim)

    @torch.no_grad()
    def fill(self, embeddings: Tensor) -> None:
        """Replace every row with `embeddings` [n_data, dim], normalised (the warm start:
        a bank of real embeddings instead of random directions)."""
        if embeddings.shape != self.embeddings.shape:
            raise ValueError(
                f"expected embeddings of shape {tuple(self.embeddings.shape)}, "
                f"got {tuple(embeddings.shape)}"
            )
        new = embeddings.detach().to(device=self.embeddings.device, dtype=torch.float32)
        self.embeddings.copy_(F.normalize(new, dim=1, eps=self.eps))

    @torch.no_grad()
    def update(self, indices: Tensor, new_embeddings: Tensor) -> None:
        """Momentum update `B[i] <- normalize(m B[i] + (1 - m) t_i)` for indices [N].

        Duplicate indices within one call are averaged: each distinct row gets one update
        with t = mean of its new embeddings, so the result does not depend on the order of
        the batch (with DDP the gathered batches can repeat samples through padding).
        """
        bank = self.embeddings
        idx = indices.to(device=bank.device, dtype=torch.long).reshape(-1)
        if new_embeddings.dim() != 2 or new_embeddings.shape != (idx.numel(), self.dim):
            raise ValueError(
                f"expected new_embeddings of shape [{idx.numel()}, {self.dim}] for indices "
                f"{tuple(indices.shape)}, got {tuple(new_embeddings.shape)}"
            )
        if idx.numel() == 0:
            return
        new = new_embeddings.detach().to(device=bank.device, dtype=bank.dtype)
        with torch.autocast(device_type=bank.device.type, enabled=False):
            unique, inverse, counts = torch.unique(idx, return_inverse=True, return_counts=True)
            # index_add_ is deterministic on CPU and, under torch.use_deterministic_algorithms,
            # on CUDA; adding into zeros is exact when a row occurs once.
            sums = torch.zeros(unique.numel(), self.dim, dtype=bank.dtype, device=bank.device)
            sums.index_add_(0, inverse, new)
            mean = sums / counts.unsqueeze(1).to(bank.dtype)
            mixed = self.momentum * bank.index_select(0, unique) + (1.0 - self.momentum) * mean
            bank.index_copy_(0, unique, F.normalize(mixed, dim=1, eps=self.eps))

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, dim={self.dim}, momentum={self.momentum}"


class ClassAwareNegativeSampler(nn.Module):
    """Draws, for each anchor, k training-sample indices uniformly (with replacement) among
    the samples whose label differs from the anchor's label.

    Built from the labels [n_data] of the samples the bank rows belong to. Samples are kept
    sorted by class, so "all samples not of class y" is the sorted order with one contiguous
    block [start_y, start_y + n_y) removed; a uniform draw u in [0, n_data - n_y) maps past
    that block (u >= start_y -> u + n_y). Everything is tensor ops on the buffers' device.
    """

    classes: Tensor
    starts: Tensor
    counts: Tensor
    order: Tensor

    def __init__(self, labels: Tensor) -> None:
        super().__init__()
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor, got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.long)
        classes, counts = torch.unique(labels, sorted=True, return_counts=True)
        if classes.numel() < 2:
            raise ValueError("class-aware negatives need at least two classes in the labels")
        # Stable sort: samples of a class keep their dataset order inside their block.
        order = torch.sort(labels, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        self.register_buffer("classes", classes)
        self.register_buffer("starts", starts)
        self.register_buffer("counts", counts)
        self.register_buffer("order", order)

    @property
    def n_data(self) -> int:
        return self.order.numel()

    def sample(self, labels: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """labels [B] -> LongTensor [B, k] of dataset indices of other-class samples.

        Raw draws are uniform int64 r in [0, 2**62); u = r mod n_other with the draws at or
        above the largest multiple of n_other redrawn, so u is exactly uniform (a redraw has
        probability < n_data / 2**62 per entry). `generator` must live on the sampler's device.
        """
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D [B], got {tuple(labels.shape)}")
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        device = self.order.device
        y = labels.to(device=device, dtype=torch.long)
        batch = y.numel()

        cls = torch.searchsorted(self.classes, y).clamp_(max=self.classes.numel() - 1)
        unknown = self.classes[cls] != y
        n_own = self.counts[cls].unsqueeze(1)  # [B, 1]
        start = self.starts[cls].unsqueeze(1)
        n_other = self.n_data - n_own
        limit = (_RAW_RANGE // n_other) * n_other  # draws >= limit would bias u; redraw them

        raw = torch.randint(0, _RAW_RANGE, (batch, k), generator=generator, device=device)
        bad = raw >= limit
        # One host sync covers both checks; the loop body almost never runs.
        has_unknown, has_bad = torch.stack([unknown.any(), bad.any()]).tolist()
        if has_unknown:
            missing = torch.unique(y[unknown]).tolist()
            raise ValueError(f"labels {missing} were not among the sampler's training labels")
        while has_bad:
            redraw = torch.randint(0, _RAW_RANGE, (batch, k), generator=generator, device=device)
            raw = torch.where(bad, redraw, raw)
            bad = raw >= limit
            has_bad = bool(bad.any())

        u = raw % n_other
        u = u + (u >= start) * n_own  # skip the anchor's own class block
        return self.order[u].to(labels.device)

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, num_classes={self.classes.numel()}"
