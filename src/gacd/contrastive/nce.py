"""Sample-reweighted NCE loss (GACD's critic) and the CRD-style normaliser Z.

The critic is h(a, s) = P / (P + k/M) with P = exp(a.s / T) / Z: the posterior that the
pair (a, s) came from the data distribution rather than from one of k noise draws out of
M training samples. Everything is computed in log space and in at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # At least fp32 (so bf16/fp16 inputs are upcast), but keep fp64 for gradcheck.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_embeddings(anchor: Tensor, negatives: Tensor, positive: Tensor | None = None) -> None:
    if anchor.dim() != 2:
        raise ValueError(f"anchor must be [B, d], got {tuple(anchor.shape)}")
    batch, dim = anchor.shape
    if positive is not None and positive.shape != anchor.shape:
        raise ValueError(
            f"positive must match anchor [B, d] = {tuple(anchor.shape)}, "
            f"got {tuple(positive.shape)}"
        )
    if negatives.dim() != 3 or negatives.shape[0] != batch or negatives.shape[2] != dim:
        raise ValueError(
            f"negatives must be [B, k, d] = [{batch}, k, {dim}] for anchor "
            f"{tuple(anchor.shape)}, got {tuple(negatives.shape)}"
        )
    if negatives.shape[1] < 1:
        raise ValueError(f"need at least one negative per anchor, got {tuple(negatives.shape)}")


def _check_scalars(temperature: float, n_data: int) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not n_data > 0:
        raise ValueError(f"n_data must be > 0, got {n_data}")


def nce_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    weight: Tensor | None,
    temperature: float,
    n_data: int,
    log_z: float | Tensor,
) -> Tensor:
    """Sample-reweighted NCE loss, a scalar:

        mean_i -w_i [ log h(a_i, p_i) + sum_j log(1 - h(a_i, n_ij)) ],
        h(a, s) = P / (P + k/M),  P = exp(a.s / T - log_z),

    with anchor [B, d], positive [B, d], negatives [B, k, d], weight [B] (None = ones),
    k = negatives.shape[1], M = n_data. The mean is over the B samples (not divided by the
    sum of weights), so a zero weight removes a sample without rescaling the others.
    """
    _check_embeddings(anchor, negatives, positive)
    _check_scalars(temperature, n_data)
    batch = negatives.shape[0]
    if weight is not None and weight.shape != (batch,):
        raise ValueError(f"weight must be [B] = [{batch}], got {tuple(weight.shape)}")

    dtype = _compute_dtype(anchor, positive, negatives)
    # fp32 even under bf16 autocast: exp(a.s / T) with T ~ 0.1 needs the mantissa bits.
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a = anchor.to(dtype)
        pos_scores = (a * positive.to(dtype)).sum(dim=-1)  # [B]
        neg_scores = torch.einsum("bd,bkd->bk", a, negatives.to(dtype))  # [B, k]
    return nce_loss_from_scores(pos_scores, neg_scores, weight, temperature, n_data, log_z)


def nce_loss_from_scores(
    pos_scores: Tensor,
    neg_scores: Tensor,
    weight: Tensor | None,
    temperature: float,
    n_data: int,
    log_z: float | Tensor,
) -> Tensor:
    """`nce_loss` from the dot products: pos_scores [B] = a_i . p_i and neg_scores [B, k] =
    a_i . n_ij. Lets a caller score a memory bank as one matrix product (anchor @ bank.T,
    then gather) instead of materialising the [B, k, d] negatives."""
    _check_scalars(temperature, n_data)
    if pos_scores.dim() != 1 or neg_scores.dim() != 2 or neg_scores.shape[0] != pos_scores.shape[0]:
        raise ValueError(
            f"need pos_scores [B] and neg_scores [B, k], got {tuple(pos_scores.shape)} "
            f"and {tuple(neg_scores.shape)}"
        )
    batch, k = neg_scores.shape
    if k < 1:
        raise ValueError("need at least one negative per anchor")
    if weight is not None and weight.shape != (batch,):
        raise ValueError(f"weight must be [B] = [{batch}], got {tuple(weight.shape)}")
    dtype = _compute_dtype(pos_scores, neg_scores)
    with torch.autocast(device_type=pos_scores.device.type, enabled=False):
        lz = torch.as_tensor(log_z, dtype=dtype, device=pos_scores.device)
        c = torch.tensor(math.log(k) - math.log(n_data), dtype=dtype, device=pos_scores.device)
        u_pos = pos_scores.to(dtype) / temperature - lz  # [B]
        u_neg = neg_scores.to(dtype) / temperature - lz  # [B, k]
        # log h = u - log(e^u + k/M);  log(1 - h) = log(k/M) - log(e^u + k/M)
        log_h_pos = u_pos - torch.logaddexp(u_pos, c)
        log_1mh_neg = c - torch.logaddexp(u_neg, c)
        per_sample = -(log_h_pos + log_1mh_neg.sum(dim=1))  # [B]
        if weight is not None:
            per_sample = per_sample * weight.to(dtype)
        return per_sample.mean()


def log_z_from_scores(neg_scores: Tensor, temperature: float, n_data: int) -> Tensor:
    """log(M * mean(exp(s / T))) over all negative scores, as a detached 0-d tensor."""
    _check_scalars(temperature, n_data)
    with torch.no_grad(), torch.autocast(device_type=neg_scores.device.type, enabled=False):
        scores = neg_scores.to(_compute_dtype(neg_scores)).reshape(-1) / temperature
        # logsumexp keeps this finite where exp(a.n / T) alone would overflow (T = 0.02).
        return torch.logsumexp(scores, dim=0) - math.log(scores.numel()) + math.log(n_data)


def _log_z_tensor(anchor: Tensor, negatives: Tensor, temperature: float, n_data: int) -> Tensor:
    """log(M * mean(exp(a.n / T))) over all B*k negatives, as a detached 0-d tensor."""
    _check_embeddings(anchor, negatives)
    dtype = _compute_dtype(anchor, negatives)
    with torch.no_grad(), torch.autocast(device_type=anchor.device.type, enabled=False):
        scores = torch.einsum("bd,bkd->bk", anchor.to(dtype), negatives.to(dtype))
    return log_z_from_scores(scores, temperature, n_data)


def estimate_log_z(anchor: Tensor, negatives: Tensor, temperature: float, n_data: int) -> float:
    """CRD-style normaliser: log Z with Z = M * mean_{i,j} exp(a_i . n_ij / T).

    With Z in P = exp(a.s / T) / Z, a typical negative has P ~ 1/M, so h ~ 1/(k + 1) and
    the k negative terms sum to about 1 at the start instead of swamping the loss,
    whatever T and M are.
    """
    return float(_log_z_tensor(anchor, negatives, temperature, n_data))


class NormalizerZ(nn.Module):
    """Holds log Z for `nce_loss`, in buffers so checkpoints save and restore it.

    mode "fixed": set from the first batch seen, then kept (CRD's choice).
    mode "ema": Z <- momentum * Z + (1 - momentum) * Z_batch on each call in training mode
    (an average of Z itself, done in log space). Like BatchNorm statistics, the value only
    moves in `train()` mode; the first call initialises it in either mode.
    """

    log_z: Tensor
    initialised: Tensor

    def __init__(self, mode: str = "fixed", momentum: float = 0.9) -> None:
        super().__init__()
        if mode not in ("fixed", "ema"):
            raise ValueError(f"mode must be 'fixed' or 'ema', got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mode = mode
        self.momentum = float(momentum)
        self.register_buffer("log_z", torch.zeros((), dtype=torch.float32))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def is_initialised(self) -> bool:
        return bool(self.initialised)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the value: the next call re-initialises it from its batch."""
        self.initialised.fill_(False)

    @torch.no_grad()
    def set_value(self, log_z: float | Tensor) -> None:
        """Set log Z explicitly (e.g. after broadcasting rank 0's value under DDP)."""
        self.log_z.copy_(torch.as_tensor(log_z, dtype=self.log_z.dtype))
        self.initialised.fill_(True)

    def value(self, anchor: Tensor, negatives: Tensor, temperature: float, n_data: int) -> Tensor:
        """log Z to use for this batch (a detached 0-d tensor), initialising on first use."""
        return self._value(lambda: _log_z_tensor(anchor, negatives, temperature, n_data))

    def value_from_scores(self, neg_scores: Tensor, temperature: float, n_data: int) -> Tensor:
        """As `value`, from the negatives' dot products [B, k] (see nce_loss_from_scores)."""
        return self._value(lambda: log_z_from_scores(neg_scores, temperature, n_data))

    @torch.no_grad()
    def _value(self, batch_log_z: Callable[[], Tensor]) -> Tensor:
        if not self.is_initialised:
            self.set_value(batch_log_z())
        elif self.mode == "ema" and self.training:
            batch = batch_log_z().to(self.log_z)
            m = self.momentum
            # log(m Z + (1 - m) Z_b) without leaving log space; m = 0 means "use Z_b".
            if m == 0.0:
                self.log_z.copy_(batch)
            else:
                self.log_z.copy_(torch.logaddexp(self.log_z + math.log(m), batch + math.log1p(-m)))
        # A copy: the caller's graph must not see later in-place updates of the buffer.
        return self.log_z.clone()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, momentum={self.momentum}"
