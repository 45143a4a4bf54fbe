"""Tests for gacd.contrastive: NCE loss, normaliser Z, memory bank, negative sampler, heads."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from gacd.contrastive import (
    COLLAPSE_COSINE,
    ClassAwareNegativeSampler,
    EmbeddingCollapseWarning,
    EmbeddingHead,
    MemoryBank,
    NormalizerZ,
    collapse_message,
    cross_class_cosine,
    estimate_log_z,
    nce_loss,
    warn_if_collapsed,
)


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _triplet(b: int = 4, k: int = 6, d: int = 8, dtype: torch.dtype = torch.float32):
    return (
        _unit(b, d, seed=1, dtype=dtype),
        _unit(b, d, seed=2, dtype=dtype),
        _unit(b, k, d, seed=3, dtype=dtype),
    )


def _reference_loss(anchor, positive, negatives, weight, temperature, n_data, log_z) -> float:
    """The plain formula, float64, explicit loops: h = P / (P + k/M), no log-space tricks."""
    a, p, n = (x.double().tolist() for x in (anchor, positive, negatives))
    b, k = len(n), len(n[0])
    noise = k / n_data
    total = 0.0
    for i in range(b):
        w = 1.0 if weight is None else float(weight[i])

        def h(x, y):
            dot = sum(xi * yi for xi, yi in zip(x, y, strict=True))
            big_p = math.exp(dot / temperature - log_z)
            return big_p / (big_p + noise)

        term = math.log(h(a[i], p[i]))
        for j in range(k):
            term += math.log(1.0 - h(a[i], n[i][j]))
        total += -w * term
    return total / b


# ---------------------------------------------------------------- nce_loss


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("log_z", [0.0, 2.5])
def test_nce_loss_matches_plain_formula(use_weight: bool, log_z: float) -> None:
    a, p, n = _triplet(b=5, k=7, d=6)
    w = torch.rand(5, generator=torch.Generator().manual_seed(4)) if use_weight else None
    got = nce_loss(a, p, n, w, temperature=0.2, n_data=50, log_z=log_z)
    want = _reference_loss(a, p, n, w, 0.2, 50, log_z)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_nce_loss_float64_matches_tightly_and_accepts_tensor_log_z() -> None:
    a, p, n = _triplet(b=3, k=4, d=5, dtype=torch.float64)
    got = nce_loss(a, p, n, None, 0.1, 1000, torch.tensor(1.3, dtype=torch.float64))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_reference_loss(a, p, n, None, 0.1, 1000, 1.3), rel=1e-12)


def test_nce_loss_gradcheck_float64() -> None:
    a, p, n = _triplet(b=3, k=4, d=5, dtype=torch.float64)
    w = torch.tensor([0.2, 1.0, 0.7], dtype=torch.float64)
    inputs = tuple(x.clone().requires_grad_(True) for x in (a, p, n))
    assert torch.autograd.gradcheck(
        lambda x, y, z: nce_loss(x, y, z, w, 0.1, 100, 0.5), inputs, eps=1e-6, atol=1e-5
    )


def test_nce_loss_finite_at_low_temperature_with_aligned_vectors() -> None:
    v = _unit(4, 16, seed=5)
    anchor = v.clone().requires_grad_(True)
    positive = v.clone().requires_grad_(True)
    negatives = v.unsqueeze(1).repeat(1, 32, 1).requires_grad_(True)
    loss = nce_loss(anchor, positive, negatives, None, temperature=0.02, n_data=1000, log_z=0.0)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (anchor, positive, negatives):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_nce_loss_stays_fp32_under_bf16_autocast() -> None:
    a, p, n = (x.to(torch.bfloat16) for x in _triplet())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = nce_loss(a, p, n, None, 0.1, 100, 0.0)
    want = nce_loss(a.float(), p.float(), n.float(), None, 0.1, 100, 0.0)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_nce_loss_decreases_as_positive_moves_toward_anchor() -> None:
    a, p, n = _triplet()
    # log Z from the batch keeps h(a, p) away from saturation, so every step shows.
    log_z = estimate_log_z(a, n, 0.1, 100)
    losses = []
    for alpha in (0.0, 0.3, 0.6, 0.9, 1.0):
        moved = F.normalize((1 - alpha) * p + alpha * a, dim=-1)
        losses.append(nce_loss(a, moved, n, None, 0.1, 100, log_z).item())
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))


def test_nce_loss_weights() -> None:
    a, p, n = _triplet(b=4)
    ones = nce_loss(a, p, n, torch.ones(4), 0.1, 100, 0.0)
    assert torch.equal(nce_loss(a, p, n, None, 0.1, 100, 0.0), ones)
    # Zero weight on sample 0: its contribution is gone, whatever its inputs are.
    w = torch.tensor([0.0, 1.0, 1.0, 1.0])
    a2, p2, n2 = a.clone(), p.clone(), n.clone()
    a2[0], p2[0], n2[0] = -a[0], p[0] * 0.5, -n[0]
    base = nce_loss(a, p, n, w, 0.1, 100, 0.0)
    assert torch.allclose(base, nce_loss(a2, p2, n2, w, 0.1, 100, 0.0))
    rest = nce_loss(a[1:], p[1:], n[1:], None, 0.1, 100, 0.0)
    assert torch.allclose(base, rest * 3 / 4)  # mean over B, not over the weight sum


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"positive": torch.zeros(4, 7)}, "positive"),
        ({"negatives": torch.zeros(4, 6)}, "negatives"),
        ({"negatives": torch.zeros(3, 6, 8)}, "negatives"),
        ({"negatives": torch.zeros(4, 0, 8)}, "negative"),
        ({"weight": torch.ones(3)}, "weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"n_data": 0}, "n_data"),
    ],
)
def test_nce_loss_validates(kwargs: dict, match: str) -> None:
    a, p, n = _triplet(b=4, k=6, d=8)
    args = {"anchor": a, "positive": p, "negatives": n, "weight": None}
    args |= {"temperature": 0.1, "n_data": 100, "log_z": 0.0} | kwargs
    with pytest.raises(ValueError, match=match):
        nce_loss(**args)


# ---------------------------------------------------------------- log Z


def test_estimate_log_z_matches_direct_float64() -> None:
    a, _, n = _triplet(b=5, k=9, d=8)
    direct = math.log(
        300 * torch.exp(torch.einsum("bd,bkd->bk", a.double(), n.double()) / 0.07).mean().item()
    )
    assert estimate_log_z(a, n, 0.07, 300) == pytest.approx(direct, rel=1e-5)
    # Stable where exp alone overflows in fp32: all scores = 1 / 0.001 = 1000.
    v = _unit(2, 4, seed=6)
    got = estimate_log_z(v, v.unsqueeze(1).repeat(1, 3, 1), 0.001, 10)
    assert got == pytest.approx(1000 + math.log(10), rel=1e-5)


def test_normalizer_fixed_keeps_first_value() -> None:
    z = NormalizerZ("fixed")
    a, _, n = _triplet()
    first = z.value(a, n, 0.1, 100)
    assert z.is_initialised
    assert first.item() == pytest.approx(estimate_log_z(a, n, 0.1, 100), rel=1e-6)
    later = z.value(a * 0.5, n, 0.1, 100)
    assert torch.equal(first, later)


def test_normalizer_ema_moves_in_training_mode_only() -> None:
    z = NormalizerZ("ema", momentum=0.5)
    a, _, n = _triplet()
    first = z.value(a, n, 0.1, 100).item()
    second_batch = estimate_log_z(-a, n, 0.1, 100)
    got = z.value(-a, n, 0.1, 100).item()
    want = math.log(0.5 * math.exp(first) + 0.5 * math.exp(second_batch))
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(first)
    z.eval()
    assert z.value(a, n, 0.1, 100).item() == got


def test_normalizer_state_dict_round_trip() -> None:
    z = NormalizerZ("ema")
    a, _, n = _triplet()
    z.value(a, n, 0.1, 100)
    fresh = NormalizerZ("ema")
    assert not fresh.is_initialised
    fresh.load_state_dict(z.state_dict())
    assert fresh.is_initialised
    assert torch.equal(fresh.log_z, z.log_z)
    fresh.eval()
    assert torch.equal(fresh.value(-a, n, 0.1, 100), z.log_z)


# ---------------------------------------------------------------- memory bank


def test_bank_init_is_unit_norm_and_reproducible() -> None:
    b1 = MemoryBank(50, 16, generator=torch.Generator().manual_seed(0))
    b2 = MemoryBank(50, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(b1.embeddings, b2.embeddings)
    assert torch.allclose(b1.embeddings.norm(dim=1), torch.ones(50), atol=1e-6)
    assert (b1.n_data, b1.dim) == (50, 16)


def test_bank_rows_reads_without_writing() -> None:
    bank = MemoryBank(20, 8, generator=torch.Generator().manual_seed(0))
    before = bank.embeddings.clone()
    idx = torch.tensor([[3, 5, 3], [0, 19, 7]])
    rows = bank.rows(idx)
    assert rows.shape == (2, 3, 8)
    assert torch.equal(rows[1, 1], before[19])
    rows.mul_(0).add_(1)  # writing into the copy must not touch the bank
    assert torch.equal(bank.embeddings, before)


def test_bank_update_matches_hand_computation_and_stays_unit_norm() -> None:
    bank = MemoryBank(10, 4, momentum=0.5, generator=torch.Generator().manual_seed(0))
    before = bank.embeddings.clone()
    idx = torch.tensor([2, 7])
    new = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    bank.update(idx, new)
    for row, t in zip(idx.tolist(), new, strict=True):
        mixed = 0.5 * before[row] + 0.5 * t
        assert torch.allclose(bank.embeddings[row], mixed / mixed.norm(), atol=1e-6)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(bank.embeddings[untouched], before[untouched])
    for step in range(20):
        g = torch.Generator().manual_seed(step)
        bank.update(torch.randint(0, 10, (6,), generator=g), torch.randn(6, 4, generator=g) * 5)
    assert torch.allclose(bank.embeddings.norm(dim=1), torch.ones(10), atol=1e-6)


def test_bank_update_averages_duplicates_order_independently() -> None:
    gen = torch.Generator().manual_seed(0)
    b1, b2 = MemoryBank(6, 3, momentum=0.3, generator=gen), MemoryBank(6, 3, momentum=0.3)
    b2.load_state_dict(b1.state_dict())
    before = b1.embeddings.clone()
    new = torch.randn(3, 3, generator=gen)
    b1.update(torch.tensor([4, 1, 4]), new)
    b2.update(torch.tensor([4, 4, 1]), new[[2, 0, 1]])
    assert torch.equal(b1.embeddings, b2.embeddings)
    mixed = 0.3 * before[4] + 0.7 * (new[0] + new[2]) / 2
    assert torch.allclose(b1.embeddings[4], mixed / mixed.norm(), atol=1e-6)


def test_bank_update_rejects_bad_shapes() -> None:
    bank = MemoryBank(6, 3)
    with pytest.raises(ValueError, match="new_embeddings"):
        bank.update(torch.tensor([0, 1]), torch.zeros(2, 4))


def test_bank_state_dict_round_trip() -> None:
    bank = MemoryBank(12, 5, generator=torch.Generator().manual_seed(3))
    bank.update(torch.arange(4), torch.randn(4, 5))
    state = bank.state_dict()
    assert set(state) == {"embeddings"}
    fresh = MemoryBank(12, 5, generator=torch.Generator().manual_seed(99))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.embeddings, bank.embeddings)


# ---------------------------------------------------------------- negative sampler


IMBALANCED = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 7, 7, 1, 0, 2])


def test_sampler_never_returns_own_class() -> None:
    sampler = ClassAwareNegativeSampler(IMBALANCED)
    queries = torch.tensor([0, 1, 2, 3, 7, 2, 2, 0])
    negatives = sampler.sample(queries, 500, generator=torch.Generator().manual_seed(0))
    assert negatives.shape == (8, 500) and negatives.dtype == torch.long
    assert negatives.device == queries.device
    assert ((negatives >= 0) & (negatives < len(IMBALANCED))).all()
    assert (IMBALANCED[negatives] != queries.unsqueeze(1)).all()


@pytest.mark.parametrize("label", [0, 2, 3, 7])
def test_sampler_is_uniform_over_other_class_samples(label: int) -> None:
    sampler = ClassAwareNegativeSampler(IMBALANCED)
    draws = sampler.sample(
        torch.full((40,), label), 1000, generator=torch.Generator().manual_seed(label)
    )
    counts = torch.bincount(draws.reshape(-1), minlength=len(IMBALANCED)).double()
    others = label != IMBALANCED
    assert (counts[~others] == 0).all()
    expected = draws.numel() / int(others.sum())
    chi2 = ((counts[others] - expected) ** 2 / expected).sum().item()
    # df <= 14; P(chi2 > 45) < 1e-4. Seeded, so this is not flaky.
    assert chi2 < 45


def test_sampler_deterministic_under_seeded_generator() -> None:
    sampler = ClassAwareNegativeSampler(IMBALANCED)
    labels = torch.tensor([0, 1, 2])
    x = sampler.sample(labels, 64, generator=torch.Generator().manual_seed(5))
    y = sampler.sample(labels, 64, generator=torch.Generator().manual_seed(5))
    z = sampler.sample(labels, 64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(x, y) and not torch.equal(x, z)


def test_sampler_rejects_unknown_labels_and_single_class() -> None:
    sampler = ClassAwareNegativeSampler(IMBALANCED)
    with pytest.raises(ValueError, match=r"\[5, 9, 100\]"):
        sampler.sample(torch.tensor([0, 5, 9, 100]), 4)
    with pytest.raises(ValueError, match="two classes"):
        ClassAwareNegativeSampler(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        ClassAwareNegativeSampler(torch.zeros(5))


def test_sampler_buffers_in_state_dict() -> None:
    sampler = ClassAwareNegativeSampler(IMBALANCED)
    assert {"classes", "starts", "counts", "order"} <= set(sampler.state_dict())
    assert sampler.sample(torch.tensor([1]), 0).shape == (1, 0)


# ---------------------------------------------------------------- heads


def test_embedding_head_unit_norm_and_frozen_option() -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(10, 6)
    x = torch.randn(5, 10)
    out = head(x)
    assert out.shape == (5, 6)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    assert all(p.requires_grad for p in head.parameters())

    frozen = EmbeddingHead(10, 6, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(x).requires_grad

    zero = EmbeddingHead(10, 6)
    torch.nn.init.zeros_(zero.linear.weight)
    torch.nn.init.zeros_(zero.linear.bias)
    xz = torch.randn(2, 10, requires_grad=True)
    zero(xz).sum().backward()  # the eps keeps a zero projection finite
    assert torch.isfinite(xz.grad).all()


def test_embedding_head_batchnorm_centres_features_by_batch_then_running_statistics() -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(10, 6, batchnorm=True)
    x = torch.rand(32, 10) * 5.0  # non-negative, like pooled ReLU features
    w, b = head.linear.weight, head.linear.bias
    # Train mode: each feature standardised by the batch (biased variance, BN's eps 1e-5).
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    expected = F.normalize(((x - mean) / torch.sqrt(var + 1e-5)) @ w.T + b, dim=1)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    # Eval mode: the running statistics (one update, momentum 0.1, unbiased variance).
    head.eval()
    r_mean = 0.9 * torch.zeros(10) + 0.1 * mean
    r_var = 0.9 * torch.ones(10) + 0.1 * x.var(dim=0, unbiased=True)
    expected = F.normalize(((x - r_mean) / torch.sqrt(r_var + 1e-5)) @ w.T + b, dim=1)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    # No affine parameters: the trainable parameters are the projection's only.
    assert {n for n, _ in head.named_parameters()} == {"linear.weight", "linear.bias"}


def test_embedding_head_fp32_under_bf16_autocast() -> None:
    head = EmbeddingHead(10, 6)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = head(torch.randn(3, 10))
    assert out.dtype == torch.float32
    assert head(torch.randn(3, 10, dtype=torch.float64).float()).dtype == torch.float32


# ----------------------------------------------------------------------------- bank fill


def test_bank_fill_replaces_every_row_with_the_normalised_embeddings() -> None:
    bank = MemoryBank(12, 5, generator=torch.Generator().manual_seed(0))
    new = torch.randn(12, 5, generator=torch.Generator().manual_seed(1)) * 3.0
    bank.fill(new)
    expected = new / new.norm(dim=1, keepdim=True)
    torch.testing.assert_close(bank.embeddings, expected)
    with pytest.raises(ValueError, match="shape"):
        bank.fill(torch.randn(11, 5))


# ----------------------------------------------------------------------------- collapse


def _pairwise_reference(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine over ordered pairs of different labels, by explicit loops."""
    values = []
    for i, j in itertools.product(range(len(labels)), repeat=2):
        if labels[i] != labels[j]:
            values.append(float(F.cosine_similarity(emb[i], emb[j], dim=0)))
    return sum(values) / len(values)


def test_cross_class_cosine_is_the_mean_over_pairs_of_different_classes() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(9, 4, generator=g) * 2.0  # not unit: the detector normalises
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0, 3])
    got = float(cross_class_cosine(emb, labels))
    assert got == pytest.approx(_pairwise_reference(emb, labels), abs=1e-6)
    assert math.isnan(float(cross_class_cosine(emb, torch.zeros(9, dtype=torch.long))))


def test_detector_fires_on_collapsed_embeddings_and_not_on_spread_ones() -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(10).repeat_interleave(20)
    # Collapsed: every sample near one direction, whatever its class.
    collapsed = torch.ones(200, 32) + 0.1 * torch.randn(200, 32, generator=g)
    # Spread: each class around its own random direction.
    centres = torch.randn(10, 32, generator=g)
    spread = centres[labels] + 0.1 * torch.randn(200, 32, generator=g)
    c = float(cross_class_cosine(collapsed, labels))
    s = float(cross_class_cosine(spread, labels))
    assert c > COLLAPSE_COSINE > s
    message = collapse_message(c, epoch=3)
    assert message is not None
    assert message.startswith("GACD collapse: mean cross-class cosine")
    assert f"> {COLLAPSE_COSINE} at epoch 3" in message
    assert collapse_message(s, epoch=3) is None
    with pytest.warns(EmbeddingCollapseWarning, match="at epoch 3"):
        assert warn_if_collapsed(c, epoch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_collapsed(s, epoch=3)
