"""Tests for the GACD method (gacd.methods.gacd): its NCE scoring path, negatives, memory
bank discipline, sample weights, options, checkpoint/resume, collapse and linear probe.

Every check compares the method against an independent fact: the public `nce_loss`, the
labels, a softmax computed by hand, a clone of the bank, an uninterrupted run. The robust
teacher and the digits splits come from the session fixtures in conftest.py
(`digits_teacher_path`, `digits_data`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from gacd.attacks import AttackSpec, feature_transport, sinkhorn_distance
from gacd.config import RunConfig, load_run_config
from gacd.contrastive import (
    EmbeddingCollapseWarning,
    MemoryBank,
    NormalizerZ,
    estimate_log_z,
    nce_loss,
)
from gacd.data import Batch
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.export import load_model
from gacd.engine.trainer import CHECKPOINT, MODEL_LAST, Trainer
from gacd.errors import ConfigError
from gacd.evaluation.robust import parse_attack, robust_accuracy
from gacd.methods import MethodContext, build_method, method_options
from gacd.methods.gacd import GACD, GACDOptions
from gacd.methods.losses import teacher_confidence
from gacd.models import ImageClassifier, build_model
from gacd.training import PreparedData, build_trainer, train

STUDENT_ARCH = "digits_cnn_small"
ATTACK = AttackSpec(eps=0.2, step_size=0.08, steps=2)
# A short distillation (the training attack cut to 2 steps to keep the file fast). Ten
# epochs, not fewer: with this student and teacher the embeddings of the paper's form (random
# bank, Z fixed, T 0.1) first bunch together and spread out later (measured, seeds 0-2,
# within/across-class cosine: 4 epochs ~0.99/0.95, 6 epochs ~0.97/0.85, 8 epochs ~0.92/0.57,
# 10 epochs ~0.82/0.10). The defaults (warm bank, Z EMA, T from 0.2) bunch less: cross-class
# cosine ~0.4 after the first of 30 full-attack epochs in benchmarks/gacd_ablation.py.
DISTILL_EPOCHS = 10
DISTILL_OVERRIDES = [
    "method.name=gacd",
    f"model.arch={STUDENT_ARCH}",
    "attack.steps=2",
    "attack.step_size=0.08",
    "optim.lr=0.05",
    "device=cpu",
    "progress=false",
    "seed=0",
]


# The paper's (and CRD's) choices where the defaults differ: random bank rows, Z fixed on the
# first batch, T = 0.1 from the first step (configs/digits/gacd_paper.yaml).
PAPER_FORM = [
    "method.bank_init=random",
    "method.z_mode=fixed",
    "method.temperature=0.1",
    "method.temperature_warmup=0",
]

# ----------------------------------------------------------------------------- helpers


def _config(out: Path, teacher: Path, epochs: int, *extra: str) -> RunConfig:
    return load_run_config(
        None,
        [*DISTILL_OVERRIDES, f"out={out}", f"teacher={teacher}", f"optim.epochs={epochs}", *extra],
    )


def _student(data: PreparedData, seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    raw = data.raw
    return build_model(
        STUDENT_ARCH, in_channels=1, num_classes=raw.num_classes, mean=raw.mean, std=raw.std
    )


def _gacd(
    teacher_path: Path,
    data: PreparedData,
    *,
    seed: int = 0,
    attack: AttackSpec = ATTACK,
    **options: Any,
) -> GACD:
    ctx = MethodContext(
        student=_student(data, seed),
        teacher=load_model(teacher_path),
        attack=attack,
        attack_train_mode=False,
        num_classes=data.raw.num_classes,
        train_labels=data.train.labels,
        generator=torch.Generator().manual_seed(1000 + seed),
        train_data=data.train,
    )
    method = build_method(method_options({"name": "gacd", **options}), ctx)
    assert isinstance(method, GACD)
    return method.train()


def _batch(data: PreparedData, n: int = 64, offset: int = 0) -> Batch:
    return data.train.batch_at(torch.arange(offset, offset + n))


def _banks(method: GACD) -> dict[str, MemoryBank]:
    return {
        name: getattr(method, name)
        for name in ("teacher_bank", "student_bank")
        if hasattr(method, name)
    }


def _sgd_step(
    method: GACD, optimizer: torch.optim.Optimizer, batch: Batch
) -> tuple[float, dict[str, Tensor]]:
    """One training step as the trainer runs it: step, backward, optimiser, after_step."""
    loss, terms, diagnostics = method.step(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step(batch)
    return float(loss.detach()), {**terms, **diagnostics}


def _embedding_cosines(method: GACD, data: PreparedData) -> tuple[float, float]:
    """(mean within-class, mean across-class) cosine of student embeddings on the test
    split; self-pairs excluded."""
    split = data.test
    x = split.images.float() / split.pixel_max
    y = split.labels
    method.eval()
    with torch.no_grad():
        emb = method.student_head(method.student.forward_features(x)[0])
    cos = emb @ emb.T
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(len(y), dtype=torch.bool)
    return float(cos[same & off_diag].mean()), float(cos[~same].mean())


def _assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def distilled(
    tmp_path_factory: pytest.TempPathFactory, digits_teacher_path: Path
) -> tuple[Trainer, Path]:
    """A short default-form GACD distillation (student anchor) through build_trainer + fit;
    the trainer (with the live method) and its output directory."""
    out = tmp_path_factory.mktemp("gacd_distilled")
    trainer = build_trainer(_config(out, digits_teacher_path, DISTILL_EPOCHS))
    trainer.fit(resume=False)
    return trainer, out


# ----------------------------------------------------------------------------- 1. NCE


@pytest.mark.parametrize("weighted", [False, True])
def test_bank_scored_nce_equals_public_nce_loss_and_gradients(
    digits_teacher_path: Path, digits_data: PreparedData, weighted: bool
) -> None:
    method = _gacd(digits_teacher_path, digits_data)
    bank = method.teacher_bank
    # Make the bank rows differ from their random init (any unit rows will do).
    g = torch.Generator().manual_seed(5)
    bank.update(torch.arange(200), F.normalize(torch.randn(200, bank.dim, generator=g), dim=1))
    batch = 24
    anchor = F.normalize(torch.randn(batch, bank.dim, generator=g), dim=1)
    positive = F.normalize(anchor + 0.5 * torch.randn(batch, bank.dim, generator=g), dim=1)
    labels = digits_data.train.labels[:batch]
    negatives = method.sampler.sample(labels, method.k, generator=g)
    weight = torch.rand(batch, generator=g) if weighted else None
    temperature, n_data = method.temperature, method.n_data

    # Z not yet set: the method estimates it from these negatives, as the public helper does.
    z = NormalizerZ()
    a1 = anchor.clone().requires_grad_(True)
    loss1 = method._nce(a1, positive, bank, z, negatives, weight)
    (grad1,) = torch.autograd.grad(loss1, a1)
    expected_log_z = estimate_log_z(anchor, bank.rows(negatives), temperature, n_data)
    assert float(z.log_z) == pytest.approx(expected_log_z, rel=1e-5)

    a2 = anchor.clone().requires_grad_(True)
    loss2 = nce_loss(
        a2, positive, bank.rows(negatives), weight, temperature, n_data, float(z.log_z)
    )
    (grad2,) = torch.autograd.grad(loss2, a2)
    torch.testing.assert_close(loss1, loss2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad1, grad2, rtol=1e-4, atol=1e-6)
    assert grad1.abs().sum() > 0

    # With Z already set (a value far from the batch's), the fixed value is used.
    z_fixed = NormalizerZ()
    z_fixed.set_value(3.0)
    loss3 = method._nce(anchor, positive, bank, z_fixed, negatives, weight)
    loss4 = nce_loss(anchor, positive, bank.rows(negatives), weight, temperature, n_data, 3.0)
    torch.testing.assert_close(loss3, loss4, rtol=1e-5, atol=1e-5)
    assert float(z_fixed.log_z) == 3.0


# ----------------------------------------------------------------------------- 2. negatives


def test_negatives_never_share_the_anchor_class(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    method = _gacd(digits_teacher_path, digits_data)
    train_labels = digits_data.train.labels
    order = torch.Generator().manual_seed(3)
    seen = torch.zeros(len(train_labels), dtype=torch.bool)
    for batch in digits_data.train.batches(128, shuffle=True, generator=order):
        negatives = method.sampler.sample(batch.labels, method.k, generator=method._sample_gen)
        assert negatives.shape == (len(batch.labels), method.k)
        assert negatives.min() >= 0 and negatives.max() < len(train_labels)
        assert not (train_labels[negatives] == batch.labels[:, None]).any()
        seen[negatives.reshape(-1)] = True
    # Not a degenerate sampler: over an epoch of anchors every training sample is drawn.
    assert seen.all()


# ----------------------------------------------------------------------------- 3. bank


@pytest.mark.parametrize("anchor", ["student", "symmetric"])
def test_bank_read_only_in_attacks_and_evaluation_written_after_step(
    digits_teacher_path: Path, digits_data: PreparedData, anchor: str
) -> None:
    method = _gacd(digits_teacher_path, digits_data, anchor=anchor)
    banks = _banks(method)
    assert set(banks) == (
        {"teacher_bank"} if anchor == "student" else {"teacher_bank", "student_bank"}
    )
    before = {name: bank.embeddings.clone() for name, bank in banks.items()}

    def unchanged() -> bool:
        return all(torch.equal(banks[n].embeddings, before[n]) for n in banks)

    batch = _batch(digits_data, 64, offset=100)
    # The training attack (positives) reads the student and heads, never the bank.
    x_pos = method.positives(batch)
    assert not torch.equal(x_pos, batch.images)
    assert (x_pos - batch.images).abs().max() <= ATTACK.eps + 1e-6
    assert unchanged()
    # Robust evaluation of the student.
    acc = robust_accuracy(
        method.student,
        digits_data.test,
        parse_attack("pgd3", 0.2, 0.08),
        generator=torch.Generator().manual_seed(0),
        max_samples=128,
    )
    assert 0.0 <= acc <= 100.0
    assert unchanged()
    # An evaluation-mode forward through the whole method (scores the bank, no after_step).
    method.eval()
    with torch.no_grad():
        method.step(batch)
        method.student(batch.images)
    assert unchanged()

    # A training step: the optimiser step leaves the bank alone, after_step writes it,
    # and only the rows of the batch's indices.
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9)
    loss, _, _ = method.step(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert unchanged()
    method.after_step(batch)
    in_batch = torch.zeros(method.n_data, dtype=torch.bool)
    in_batch[batch.indices] = True
    for name, bank in banks.items():
        changed = (bank.embeddings != before[name]).any(dim=1)
        assert torch.equal(changed, in_batch), name


@pytest.mark.parametrize("anchor", ["student", "teacher"])
def test_bank_update_is_the_momentum_rule_on_this_batch_embeddings(
    digits_teacher_path: Path, digits_data: PreparedData, anchor: str
) -> None:
    """x+ = x (positive_attack none), so the embeddings written can be recomputed: teacher
    rows for the student anchor, student rows (pre-update student) for the teacher anchor."""
    method = _gacd(digits_teacher_path, digits_data, anchor=anchor, positive_attack="none")
    name = "teacher_bank" if anchor == "student" else "student_bank"
    bank = getattr(method, name)
    batch = _batch(digits_data, 32, offset=7)
    old = bank.embeddings.clone()
    with torch.no_grad():
        if anchor == "student":
            new = method.teacher_head(method.teacher.forward_features(batch.images)[0])
        else:
            new = method.student_head(method.student.forward_features(batch.images)[0])
    m = method.options.momentum
    expected = F.normalize(m * old[batch.indices] + (1 - m) * new, dim=1)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
    _sgd_step(method, optimizer, batch)
    torch.testing.assert_close(bank.embeddings[batch.indices], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 4. unit norm


def test_bank_rows_stay_unit_norm_and_hold_teacher_embeddings(
    distilled: tuple[Trainer, Path], digits_data: PreparedData
) -> None:
    trainer, _ = distilled
    method = trainer.method
    assert isinstance(method, GACD)
    bank = method.teacher_bank.embeddings
    norms = bank.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    # After several epochs of updates, row i is close to the teacher embedding of sample i
    # (the positives are PGD points around x_i): far closer than a random unit vector.
    split = digits_data.train
    x = split.images.float() / split.pixel_max
    with torch.no_grad():
        t = method.teacher_head(method.teacher.forward_features(x)[0])
    own = (bank * t).sum(dim=1)
    shuffled = (bank * t.roll(1, dims=0)).sum(dim=1)
    assert own.mean() > 0.9
    assert own.mean() > shuffled.mean() + 0.2


# ----------------------------------------------------------------------------- 5. weights


def test_teacher_confidence_is_true_class_softmax_and_monotone() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g) * 3
    labels = torch.randint(0, 10, (50,), generator=g)
    exp = logits.double().exp()
    by_hand = exp[torch.arange(50), labels] / exp.sum(dim=1)
    weights = teacher_confidence(logits, labels)
    torch.testing.assert_close(weights.double(), by_hand, rtol=1e-6, atol=1e-7)
    assert not weights.requires_grad

    # Lower the true-class logit step by step: the weight must fall strictly.
    base = torch.randn(1, 10, generator=g).repeat(20, 1)
    y = torch.full((20,), 3)
    base[:, 3] = torch.linspace(6.0, -6.0, 20)
    w = teacher_confidence(base, y)
    assert (w[1:] < w[:-1]).all()
    # Confident and correct -> near 1; confidently wrong -> near 0.
    sharp = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    torch.testing.assert_close(
        teacher_confidence(sharp, torch.tensor([0, 0])),
        torch.tensor([1.0, 0.0]),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("reweight", [True, False])
def test_step_loss_is_weighted_nce_or_plain_nce(
    digits_teacher_path: Path, digits_data: PreparedData, reweight: bool
) -> None:
    """Recompute the step's loss from the public pieces: x+ = x, teacher and student
    embeddings, the same negatives (same generator state), nce_loss with w_i = the
    teacher's softmax probability of y_i (reweight) or no weights."""
    method = _gacd(digits_teacher_path, digits_data, positive_attack="none", reweight=reweight)
    batch = _batch(digits_data, 48, offset=300)
    state = method._sample_gen.get_state()
    loss, _, diagnostics = method.step(batch)

    x, y = batch.images, batch.labels
    with torch.no_grad():
        t_feat, t_logits = method.teacher.forward_features(x)
        t_emb = method.teacher_head(t_feat)
        s_emb = method.student_head(method.student.forward_features(x)[0])
        negatives = method.sampler.sample(y, method.k, generator=torch.Generator().set_state(state))
    probs = torch.softmax(t_logits.double(), dim=1)[torch.arange(len(y)), y].float()
    weight = probs if reweight else None
    expected = nce_loss(
        s_emb,
        t_emb,
        method.teacher_bank.rows(negatives),
        weight,
        method.temperature,
        method.n_data,
        method.z_student.log_z,
    )
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    if reweight:
        assert float(diagnostics["weight"]) == pytest.approx(float(probs.mean()), rel=1e-5)
        unweighted = nce_loss(
            s_emb,
            t_emb,
            method.teacher_bank.rows(negatives),
            None,
            method.temperature,
            method.n_data,
            method.z_student.log_z,
        )
        assert float(probs.max()) < 1.0
        assert float(loss.detach()) < float(unweighted)
    else:
        assert "weight" not in diagnostics


# ----------------------------------------------------------------------------- 6. collapse


def test_student_embeddings_do_not_collapse_on_held_out_data(
    distilled: tuple[Trainer, Path], digits_data: PreparedData
) -> None:
    trainer, _ = distilled
    within, across = _embedding_cosines(trainer.method, digits_data)
    assert within - across > 0.2, (within, across)
    assert across < 0.5, (within, across)


def test_paper_teacher_anchored_form_collapses_where_the_default_does_not(
    tmp_path: Path,
    digits_teacher_path: Path,
    digits_data: PreparedData,
    distilled: tuple[Trainer, Path],
) -> None:
    """docs/architecture.md: with a memory bank the negatives carry no gradient, so the
    paper's wording (teacher anchor, student-bank negatives, trained teacher head) gives the
    student only attraction and its embeddings collapse. Measured with seeds 0, 1, 2 at
    this budget: every student embedding pair at cosine 1.000 (default form: 0.80-0.84
    within a class, 0.08-0.12 across classes)."""
    config = _config(
        tmp_path / "paper",
        digits_teacher_path,
        DISTILL_EPOCHS,
        *PAPER_FORM,
        "method.anchor=teacher",
        "method.train_teacher_head=true",
    )
    paper = build_trainer(config)
    with pytest.warns(EmbeddingCollapseWarning, match="GACD collapse"):  # the detector sees it
        paper.fit(resume=False)
    p_within, p_across = _embedding_cosines(paper.method, digits_data)
    d_within, d_across = _embedding_cosines(distilled[0].method, digits_data)
    assert p_across > 0.95, (p_within, p_across)  # collapsed: other classes look alike
    assert (d_within - d_across) > (p_within - p_across) + 0.3


# ----------------------------------------------------------------------------- 7. options

TEACHER_ANCHOR_RISES = (
    "the paper's teacher-anchored form (anchor=teacher, fixed teacher head, CRD's random bank "
    "and fixed Z, T = 0.1): the bank "
    "negatives carry no gradient, so the student only moves toward its positives; as the "
    "student bank fills with those embeddings, other-class rows come close to every teacher "
    "anchor and the negative terms grow (8.6 -> ~20 within 8 steps): the loss rises. The "
    "collapse mechanism docs/architecture.md describes, kept as an option for comparison."
)
OPTION_CASES = [
    pytest.param({"positive_attack": "ot"}, id="ot"),
    pytest.param({"positive_attack": "misalign"}, id="misalign"),
    pytest.param({"positive_attack": "kl"}, id="kl"),
    pytest.param({"positive_attack": "ce"}, id="ce"),
    pytest.param({"positive_attack": "none"}, id="none"),
    pytest.param({"anchor": "teacher"}, id="anchor_teacher"),
    pytest.param(
        {
            "anchor": "teacher",
            "bank_init": "random",
            "z_mode": "fixed",
            "temperature": 0.1,
            "temperature_warmup": 0,
        },
        id="anchor_teacher_paper",
        marks=pytest.mark.xfail(strict=True, reason=TEACHER_ANCHOR_RISES),
    ),
    pytest.param({"anchor": "symmetric"}, id="anchor_symmetric"),
    # Fixed Z at T = 0.1 rose over 8 steps with the earlier fixture teacher (7.1 -> 15 -> ~10);
    # with the teacher trained by PGD-AT's official protocol it decreases: a property of
    # the teacher, so not pinned here (the validation ablation in the README is the evidence).
    pytest.param({"z_mode": "fixed", "temperature": 0.1}, id="z_fixed"),
    pytest.param({"z_mode": "fixed", "bank_init": "random"}, id="z_fixed_bank_random"),
    pytest.param({"bank_init": "random"}, id="bank_random"),
    pytest.param({"center_teacher": True}, id="center_teacher"),
    pytest.param({"ot_space": "logits", "ot_epsilon": 0.01}, id="ot_logits"),
    pytest.param({"ce_weight": 0.5, "kd_weight": 0.5}, id="ce_kd_terms"),
    pytest.param({"reweight": False}, id="no_reweight"),
]


@pytest.mark.parametrize("options", OPTION_CASES)
def test_each_option_runs_and_its_loss_decreases(
    digits_teacher_path: Path, digits_data: PreparedData, options: dict[str, Any]
) -> None:
    """20 plain SGD steps on one fixed batch: the logged terms match the options, and the
    mean loss of the last 3 steps is below the first step's."""
    method = _gacd(digits_teacher_path, digits_data, **options)
    batch = _batch(digits_data, 64, offset=500)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
    losses: list[float] = []
    terms: dict[str, Tensor] = {}
    for _ in range(20):
        loss, terms = _sgd_step(method, optimizer, batch)
        losses.append(loss)
    expected_terms = {"pos_cos", "teacher_acc", "cross_cos", "temperature"}
    if options.get("anchor", "student") != "teacher":
        expected_terms.add("nce")
    if options.get("anchor") in ("teacher", "symmetric"):
        expected_terms.add("nce_t")
    if options.get("ce_weight"):
        expected_terms.add("ce")
    if options.get("kd_weight"):
        expected_terms.add("kd")
    if options.get("reweight", True):
        expected_terms.add("weight")
    assert set(terms) == expected_terms
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < losses[0], losses


# ----------------------------------------------------------------------------- 8. resume


class _Interrupted(RuntimeError):
    pass


def test_checkpoint_resumes_bank_z_heads_and_bit_for_bit(
    tmp_path: Path, digits_teacher_path: Path, distilled: tuple[Trainer, Path]
) -> None:
    _, reference_out = distilled  # DISTILL_EPOCHS uninterrupted, through the same config
    config = _config(tmp_path / "run", digits_teacher_path, DISTILL_EPOCHS)

    # Interrupt a run after 2 epochs (before the third starts).
    first = build_trainer(config)
    run_epoch = first._train_epoch

    def stop_at_epoch_2(epoch: int, epochs: int) -> dict[str, Any]:
        if epoch == 2:
            raise _Interrupted
        return run_epoch(epoch, epochs)

    first._train_epoch = stop_at_epoch_2  # type: ignore[method-assign]
    with pytest.raises(_Interrupted):
        first.fit(resume=False)
    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert saved["epoch"] == 2

    fresh = build_trainer(config)
    live = first.method
    assert isinstance(live, GACD) and isinstance(fresh.method, GACD)
    # Before loading, the fresh trainer differs where it matters (so the checks below bite).
    assert not bool(fresh.method.z_student.initialised)
    assert not torch.equal(fresh.method.teacher_bank.embeddings, live.teacher_bank.embeddings)
    assert not torch.equal(fresh.method.student_head.linear.weight, live.student_head.linear.weight)
    fresh.load_state_dict(saved)
    m = fresh.method
    assert torch.equal(m.teacher_bank.embeddings, live.teacher_bank.embeddings)
    assert torch.equal(m.z_student.log_z, live.z_student.log_z)
    assert bool(m.z_student.initialised)
    for head in ("student_head", "teacher_head"):
        _assert_states_equal(getattr(m, head).state_dict(), getattr(live, head).state_dict())
    _assert_states_equal(m.student.state_dict(), live.student.state_dict())
    # And everything the checkpoint saved for the method (bank, Z, heads, sampler) is back.
    _assert_states_equal(m.state_dict(), saved["method"])

    # Finish the run from the checkpoint: identical to the uninterrupted run, bit for bit.
    fresh.fit(resume=True)
    resumed = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    reference = load_checkpoint(reference_out / CHECKPOINT)
    assert resumed["epoch"] == reference["epoch"] == DISTILL_EPOCHS
    _assert_states_equal(resumed["method"], reference["method"])
    _assert_states_equal(
        load_checkpoint(tmp_path / "run" / MODEL_LAST)["state_dict"],
        load_checkpoint(reference_out / MODEL_LAST)["state_dict"],
    )


# ----------------------------------------------------------------------------- 9. k cap


def test_k_is_capped_at_the_smallest_other_class_count(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    labels = digits_data.train.labels.tolist()
    counts = Counter(labels)
    smallest_other = min(len(labels) - n for n in counts.values())
    method = _gacd(digits_teacher_path, digits_data, negatives=16384)
    assert smallest_other < 16384
    assert method.k == smallest_other
    assert method.n_data == len(labels)
    # Asking for fewer than the cap keeps the number asked for.
    assert _gacd(digits_teacher_path, digits_data, negatives=100).k == 100


# ----------------------------------------------------------------------------- 10. probe


def test_linear_probe_trains_only_the_classifier(
    tmp_path: Path, distilled: tuple[Trainer, Path], digits_data: PreparedData
) -> None:
    _, distilled_out = distilled
    init = distilled_out / MODEL_LAST
    before = load_model(init).state_dict()
    config = load_run_config(
        None,
        [
            "method.name=linear",
            f"init={init}",
            "optim.epochs=8",
            "optim.lr=0.05",
            "optim.weight_decay=0.0",
            "eval.val_attack_steps=0",
            "device=cpu",
            "progress=false",
            f"out={tmp_path / 'probe'}",
        ],
    )
    result = train(config, resume=False)
    probe = load_model(result.model_last)
    after = probe.state_dict()
    assert before.keys() == after.keys()
    body = [k for k in before if not k.startswith("classifier.")]
    assert any("running_mean" in k for k in body)  # BN buffers are among the checks
    for key in body:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    accuracy = robust_accuracy(probe, digits_data.test, parse_attack("natural", 0, 0))
    assert accuracy > 50.0  # chance is 10%


# ----------------------------------------------------------------------------- 11. warm start


def _all_features(model: ImageClassifier, data: PreparedData) -> Tensor:
    split = data.train
    with torch.no_grad():
        return model.eval().forward_features(split.images.float() / split.pixel_max)[0]


@pytest.mark.parametrize("center", [False, True], ids=["raw", "centred"])
def test_warm_start_bank_rows_equal_teacher_embeddings_before_step_one(
    digits_teacher_path: Path, digits_data: PreparedData, center: bool
) -> None:
    method = _gacd(
        digits_teacher_path,
        digits_data,
        bank_init="warm",
        center_teacher=center,
        anchor="symmetric",
    )
    # Independently: a fresh copy of the teacher over the whole training split, one batch.
    feats = _all_features(load_model(digits_teacher_path), digits_data)
    if center:
        feats = feats - feats.mean(dim=0)
    with torch.no_grad():
        expected = F.normalize(method.teacher_head.linear(feats), dim=1)
    torch.testing.assert_close(method.teacher_bank.embeddings, expected, rtol=1e-5, atol=1e-5)
    # The student bank (symmetric form) holds the initial student's embeddings.
    with torch.no_grad():
        s_expected = method.student_head(_all_features(_student(digits_data, 0), digits_data))
    torch.testing.assert_close(method.student_bank.embeddings, s_expected, rtol=1e-5, atol=1e-5)
    # Nothing was estimated yet: Z comes from the first step, against these real rows.
    assert not method.z_student.is_initialised
    method.step(_batch(digits_data))
    assert method.z_student.is_initialised


def test_random_bank_init_keeps_random_rows_and_warm_needs_the_split(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    method = _gacd(digits_teacher_path, digits_data, bank_init="random")
    teacher_rows = _gacd(digits_teacher_path, digits_data, bank_init="warm").teacher_bank.embeddings
    own = (method.teacher_bank.embeddings * teacher_rows).sum(dim=1)
    assert own.abs().mean() < 0.2  # random directions in 128-d: |cos| ~ 0.07
    ctx = MethodContext(
        student=_student(digits_data, 0),
        teacher=load_model(digits_teacher_path),
        attack=ATTACK,
        attack_train_mode=False,
        num_classes=digits_data.raw.num_classes,
        train_labels=digits_data.train.labels,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(ConfigError, match=r"method\.bank_init"):
        build_method(method_options({"name": "gacd", "bank_init": "warm"}), ctx)


# ----------------------------------------------------------------------------- 12. detector


def test_collapse_detector_warns_on_a_collapsed_student_and_logs_each_epoch(
    digits_teacher_path: Path, digits_data: PreparedData, distilled: tuple[Trainer, Path]
) -> None:
    method = _gacd(digits_teacher_path, digits_data)
    # A student head that maps everything to one direction: fully collapsed embeddings.
    with torch.no_grad():
        method.student_head.linear.weight.zero_()
        method.student_head.linear.bias.fill_(1.0)
    _, _, diagnostics = method.step(_batch(digits_data))
    assert float(diagnostics["cross_cos"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.warns(EmbeddingCollapseWarning, match=r"cosine 1\.00 > 0\.9 at epoch 1"):
        method.start_epoch(1, 2)
    # The distilled run logged the detector every epoch and ended spread out: no warning.
    trainer, out = distilled
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == DISTILL_EPOCHS
    assert all("train_cross_cos" in line for line in lines)
    assert trainer.method._cos_count > 0  # the last epoch's steps are still summed
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingCollapseWarning)
        trainer.method.start_epoch(DISTILL_EPOCHS, DISTILL_EPOCHS + 1)


# ----------------------------------------------------------------------------- 13. OT space


def test_ot_on_logits_is_the_sinkhorn_distance_between_logits(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    model = _student(digits_data, 0).eval()
    x = _batch(digits_data, 32).images
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    kwargs = {"epsilon": 0.05, "iterations": 20}
    with torch.no_grad():
        logits = feature_transport(model, x, space="logits", **kwargs)(x_adv)
        feats = feature_transport(model, x, **kwargs)(x_adv)
        by_hand_logits = sinkhorn_distance(model(x_adv), model(x), **kwargs)
        by_hand_feats = sinkhorn_distance(
            model.forward_features(x_adv)[0], model.forward_features(x)[0], **kwargs
        )
    torch.testing.assert_close(logits, by_hand_logits)
    torch.testing.assert_close(feats, by_hand_feats)
    assert not torch.allclose(logits, feats)


# ----------------------------------------------------------------------------- 14. defaults


def test_chosen_defaults_are_wired_through_options_config_and_method(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    """The defaults chosen on the validation split (README, GACD section) are the options'
    defaults, what configs/digits/gacd.yaml asks for, and what a built method runs with;
    configs/digits/gacd_paper.yaml keeps the paper's form reachable."""
    chosen = {
        "bank_init": "warm",
        "z_mode": "ema",
        "temperature": 0.1,
        "temperature_start": 0.2,
        "temperature_warmup": 5,
        "center_teacher": False,
        "student_head_bn": False,
        "ot_space": "features",
        "positive_attack": "ot",
        "anchor": "student",
    }
    defaults = GACDOptions()
    assert {k: getattr(defaults, k) for k in chosen} == chosen
    root = Path(__file__).resolve().parents[1] / "configs" / "digits"
    from_yaml = load_run_config(str(root / "gacd.yaml"), [])
    assert {k: getattr(from_yaml.method, k) for k in chosen} == chosen
    paper = load_run_config(str(root / "gacd_paper.yaml"), []).method
    keys = ("bank_init", "z_mode", "temperature", "temperature_warmup")
    assert [f"method.{k}={getattr(paper, k)}" for k in keys] == PAPER_FORM

    method = _gacd(digits_teacher_path, digits_data)
    assert (method.options.temperature, method.temperature) == (0.1, 0.2)  # warm-up from 0.2
    assert method.z_student.mode == "ema"
    assert isinstance(method.student_head.norm, torch.nn.Identity)
    assert torch.count_nonzero(method.teacher_center) == 0
    # Warm: the bank is not the random start the same generator would have drawn.
    random_start = _gacd(digits_teacher_path, digits_data, bank_init="random")
    assert not torch.allclose(method.teacher_bank.embeddings, random_start.teacher_bank.embeddings)


# ----------------------------------------------------------------------------- 15. T warm-up


def test_temperature_warms_up_geometrically_and_resets_z_when_it_changes(
    digits_teacher_path: Path, digits_data: PreparedData
) -> None:
    method = _gacd(
        digits_teacher_path,
        digits_data,
        temperature=0.02,
        temperature_start=0.2,
        temperature_warmup=5,
        positive_attack="none",
    )
    schedule = [method.temperature_at(e) for e in range(8)]
    # Independently: 0.2 * 0.1 ** (e / 5) for e < 5, then 0.02; a constant ratio per epoch.
    expected = [0.2 * 0.1 ** (e / 5) for e in range(5)] + [0.02] * 3
    assert schedule == pytest.approx(expected, rel=1e-12)
    assert method.temperature == 0.2  # the first epoch runs at the start value
    # At or above the start value, and without warm-up epochs, T is constant.
    for options in ({"temperature": 0.3}, {"temperature": 0.02, "temperature_warmup": 0}):
        m = _gacd(digits_teacher_path, digits_data, positive_attack="none", **options)
        assert {m.temperature_at(e) for e in range(8)} == {options["temperature"]}

    batch = _batch(digits_data, 48)
    for epoch in range(8):
        method.start_epoch(epoch, 8)
        assert method.temperature == schedule[epoch]
        changed = epoch > 0 and schedule[epoch] != schedule[epoch - 1]
        # Z estimated at the old T is forgotten when T moves, kept when it does not.
        assert method.z_student.is_initialised == (epoch > 0 and not changed)
        state = method._sample_gen.get_state()
        _, _, diagnostics = method.step(batch)
        assert float(diagnostics["temperature"]) == pytest.approx(schedule[epoch])
        if epoch == 0 or changed:
            # Re-estimated on this batch at this epoch's T (x+ = x, the bank not yet updated).
            with torch.no_grad():
                s_emb = method.student_head(method.student.forward_features(batch.images)[0])
            negatives = method.sampler.sample(
                batch.labels, method.k, generator=torch.Generator().set_state(state)
            )
            rows = method.teacher_bank.rows(negatives)
            expected_z = estimate_log_z(s_emb, rows, schedule[epoch], method.n_data)
            assert float(method.z_student.log_z) == pytest.approx(expected_z, rel=1e-5)
