"""GACD: Guided Adversarial Contrastive Distillation (docs/architecture.md).

The student learns the robust teacher's features through a sample-reweighted NCE critic:
adversarial positives x+ (PGD maximising a student feature distance), the teacher's
embedding of the same input as the positive, teacher-bank rows of other classes as
negatives, and each sample weighted by the teacher's probability of its true class.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from gacd.attacks import cross_entropy, feature_transport, kl_to_reference
from gacd.attacks.pgd import Objective
from gacd.contrastive import (
    COLLAPSE_COSINE,
    ClassAwareNegativeSampler,
    EmbeddingCollapseWarning,
    EmbeddingHead,
    MemoryBank,
    NormalizerZ,
    collapse_message,
    cross_class_cosine,
    nce_loss_from_scores,
)
from gacd.data import Batch, DeviceSplit
from gacd.engine.distributed import all_gather_cat, is_distributed, is_main
from gacd.errors import ConfigError
from gacd.methods.base import (
    Method,
    MethodContext,
    MethodOptions,
    Step,
    register_method,
    step_output,
)
from gacd.methods.losses import accuracy, kl_divergence, teacher_confidence
from gacd.methods.recipes import Recipe, StageTemplate
from gacd.options import check_range


@dataclass
class GACDOptions(MethodOptions):
    name: str = "gacd"
    negatives: int = 16384  # k; capped at the smallest number of other-class samples
    # T = 0.1 (the paper's), reached through a warm-up: the first `temperature_warmup` epochs
    # anneal T geometrically from `temperature_start` (a no-op when T >= temperature_start).
    # Started at a low T the student collapses (every embedding one point: T <= 0.07 on
    # digits); started at 0.2 the embeddings spread and align first and no T of the paper's
    # sweep (0.02-0.2) collapses them (README, GACD section).
    temperature: float = 0.1
    temperature_start: float = 0.2
    temperature_warmup: int = 5
    momentum: float = 0.5  # memory-bank momentum m
    embed_dim: int = 128
    # Which PGD objective makes the positives x+: Sinkhorn OT between student features of the
    # adversarial and natural batch (the paper's), embedding misalignment with the teacher,
    # KL to the teacher, label CE, or none (x+ = x).
    positive_attack: Literal["ot", "misalign", "kl", "ce", "none"] = "ot"
    ot_epsilon: float = 0.05
    ot_iterations: int = 30
    # What the OT objective compares: penultimate features (the paper's wording) or logits
    # (feature scattering's code, where the OT attack comes from).
    ot_space: Literal["features", "logits"] = "features"
    reweight: bool = True  # teacher-confidence weights w_i (False: the ablation)
    # student: student anchor, teacher positive, teacher-bank negatives (the default; why:
    # docs/architecture.md);
    # teacher: the paper's wording (teacher anchor, student-bank negatives);
    # symmetric: CRD's two-sided form (sum of both).
    anchor: Literal["student", "teacher", "symmetric"] = "student"
    train_teacher_head: bool = False
    # warm: before the first step, one pass over the training split fills the teacher bank
    # with the teacher's embeddings (and a student bank with the initial student's), so the
    # negatives and the Z estimate are real from step one; random: unit Gaussian rows (CRD's
    # start, the ablation).
    bank_init: Literal["warm", "random"] = "warm"
    # Subtract the teacher's mean training feature before its (random, fixed) head. Pooled
    # ReLU features all lie in one orthant, so uncentred embeddings of different classes
    # share a common direction (cross-class cosine ~0.35-0.43 on digits, ~-0.07 centred).
    center_teacher: bool = False
    # BatchNorm (no affine) on the student's features inside its embedding head: the
    # student's embeddings start spread out instead of in one cone (see EmbeddingHead).
    student_head_bn: bool = False
    # Z: fixed on the first batch (CRD, the paper) or a running EMA of the batch estimate.
    # EMA by default: a Z fixed while the student's embeddings still bunch together stays
    # wrong for the rest of the run (digits validation, 3 seeds, T = 0.1: PGD-20 of the
    # linear probe 33.1 +- 0.8 with EMA, 18.2 +- 10.8 fixed; README, GACD section).
    z_mode: Literal["fixed", "ema"] = "ema"
    z_momentum: float = 0.9
    ce_weight: float = 0.0  # optional CE on the student's logits of x+
    kd_weight: float = 0.0  # optional KD (T^2 KL) from the teacher's logits of x+
    kd_temperature: float = 4.0

    def __post_init__(self) -> None:
        for key, ok, allowed in (
            ("negatives", self.negatives >= 1, "an integer >= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("temperature_start", self.temperature_start > 0, "> 0"),
            ("temperature_warmup", self.temperature_warmup >= 0, "an integer >= 0"),
            ("momentum", 0 <= self.momentum < 1, "0 <= momentum < 1"),
            ("embed_dim", self.embed_dim >= 1, "an integer >= 1"),
            ("ot_epsilon", self.ot_epsilon > 0, "> 0"),
            ("ot_iterations", self.ot_iterations >= 1, "an integer >= 1"),
            ("z_momentum", 0 <= self.z_momentum < 1, "0 <= z_momentum < 1"),
            ("ce_weight", self.ce_weight >= 0, ">= 0"),
            ("kd_weight", self.kd_weight >= 0, ">= 0"),
            ("kd_temperature", self.kd_temperature > 0, "> 0"),
        ):
            check_range(f"method.{key}", getattr(self, key), ok, f"allowed: {allowed}")


def _recipe(name: str, label: str, then: str, reweight: bool = True) -> Recipe:
    """Feature distillation, then a linear probe on natural images ("GACD"), a linear probe
    on PGD examples ("adv_linear") or adversarial fine-tuning of the whole student
    ("GACD+AFT"); recipes sharing a distillation share its stage."""
    prefix = "gacd" if reweight else "gacd_no_reweight"
    method = {"name": "gacd"} if reweight else {"name": "gacd", "reweight": False}
    distill = StageTemplate(f"{prefix}_distill", "distill", method, evaluated=False)
    if then == "linear":
        final = StageTemplate(f"{prefix}_linear", "linear", {"name": "linear"}, from_previous=True)
    elif then == "adv_linear":
        probe = {"name": "linear", "adversarial": True}
        final = StageTemplate(f"{prefix}_adv_linear", "linear", probe, from_previous=True)
    else:
        final = StageTemplate(name, "aft", {"name": "pgd_at"}, from_previous=True)
    return Recipe(name, label, (distill, final))


@register_method
class GACD(Method):
    name = "gacd"
    label = "GACD"
    Options = GACDOptions
    needs_teacher = True

    @classmethod
    def recipes(cls) -> tuple[Recipe, ...]:
        # GACD's features are not a classifier: every recipe ends in a classification stage.
        return (
            _recipe("gacd", "GACD", "linear"),
            _recipe("gacd_adv_probe", "GACD (adv. probe)", "adv_linear"),
            _recipe("gacd_aft", "GACD+AFT", "aft"),
            _recipe("gacd_no_reweight", "GACD w/o weights", "linear", reweight=False),
            _recipe("gacd_aft_no_reweight", "GACD+AFT w/o weights", "aft", reweight=False),
        )

    selection = None  # the classifier is trained afterwards (linear evaluation or AFT)

    def __init__(self, ctx: MethodContext, options: GACDOptions) -> None:
        super().__init__(ctx, options)
        o = options
        labels = ctx.train_labels
        self.n_data = int(labels.numel())
        counts = torch.bincount(labels.cpu())
        self.k = min(o.negatives, self.n_data - int(counts.max()))
        gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        )
        self.student_head = EmbeddingHead(
            ctx.student.feature_dim, o.embed_dim, batchnorm=o.student_head_bn
        )
        self.teacher_head = EmbeddingHead(
            self.teacher.feature_dim, o.embed_dim, trainable=o.train_teacher_head
        )
        self.sampler = ClassAwareNegativeSampler(labels)
        # One bank per side that serves as negatives: teacher rows for a student anchor,
        # student rows for a teacher anchor, both for the symmetric form.
        if o.anchor in ("student", "symmetric"):
            self.teacher_bank = MemoryBank(
                self.n_data, o.embed_dim, momentum=o.momentum, generator=gen
            )
            self.z_student = NormalizerZ(o.z_mode, o.z_momentum)
        if o.anchor in ("teacher", "symmetric"):
            self.student_bank = MemoryBank(
                self.n_data, o.embed_dim, momentum=o.momentum, generator=gen
            )
            self.z_teacher = NormalizerZ(o.z_mode, o.z_momentum)
        self.to(labels.device)
        # Negative sampling draws on the bank's device; on CPU the run's own generator (so a
        # resumed run is bit-identical), elsewhere a device generator (listed in generators()).
        self._sample_gen = (
            ctx.generator
            if labels.device.type == "cpu"
            else torch.Generator(labels.device).manual_seed(int(gen.initial_seed()))
        )
        self._pending: tuple[Tensor, Tensor | None, Tensor | None] | None = None
        self.temperature = self.temperature_at(0)
        # Subtracted from teacher features before the head (zeros unless center_teacher).
        self.register_buffer(
            "teacher_center", torch.zeros(self.teacher.feature_dim, device=labels.device)
        )
        if o.bank_init == "warm" or o.center_teacher:
            self.warm_start(ctx.train_data)
        # The collapse detector's running sum over this epoch's steps (no sync per step).
        self._cos_sum = torch.zeros((), device=labels.device)
        self._cos_count = torch.zeros((), device=labels.device)

    # -- memory-bank warm start --------------------------------------------------------------
    @torch.no_grad()
    def _features(self, net: nn.Module, data: DeviceSplit) -> Tensor:
        """Penultimate features [n_data, feature_dim] of every training sample, in dataset
        order (eval mode, no augmentation; the net's mode is restored)."""
        was_training = net.training
        net.eval()
        rows: Tensor | None = None
        for batch in data.batches(512):
            feats = net.forward_features(batch.images)[0].float()
            if rows is None:
                rows = feats.new_empty(self.n_data, feats.shape[1])
            rows[batch.indices] = feats
        net.train(was_training)
        assert rows is not None
        return rows

    def _teacher_embed(self, features: Tensor) -> Tensor:
        return self.teacher_head(features - self.teacher_center)

    @torch.no_grad()
    def warm_start(self, data: DeviceSplit | None) -> None:
        """One pass over the training split: the teacher's mean feature (for center_teacher)
        and, with bank_init 'warm', banks of real embeddings: the teacher bank through the
        teacher and its head, a student bank through the initial student. Every
        data-parallel rank computes the same values."""
        o = self.options
        if data is None:
            raise ConfigError(
                f"method.bank_init: {o.bank_init!r} with center_teacher: {o.center_teacher} "
                "needs the training split, which this context does not carry "
                "(MethodContext.train_data); allowed without it: bank_init random, "
                "center_teacher false"
            )
        if len(data) != self.n_data:
            raise ValueError(
                f"train_data has {len(data)} samples, the labels {self.n_data}: not one split"
            )
        t_feat = self._features(self.teacher, data)
        if o.center_teacher:
            self.teacher_center.copy_(t_feat.mean(dim=0))
        if o.bank_init != "warm":
            return
        heads = (self.teacher_head, self.student_head)
        modes = [h.training for h in heads]
        for h in heads:
            h.eval()
        if hasattr(self, "teacher_bank"):
            self.teacher_bank.fill(self._teacher_embed(t_feat).float())
        if hasattr(self, "student_bank"):
            self.student_bank.fill(self.student_head(self._features(self.student, data)).float())
        for h, mode in zip(heads, modes, strict=True):
            h.train(mode)

    # -- temperature schedule and collapse detector ---------------------------------------
    def temperature_at(self, epoch: int) -> float:
        """T for a 0-based epoch: geometric from temperature_start to temperature over the
        warm-up epochs, then temperature."""
        o = self.options
        if epoch >= o.temperature_warmup or o.temperature_start <= o.temperature:
            return o.temperature
        return o.temperature_start * (o.temperature / o.temperature_start) ** (
            epoch / o.temperature_warmup
        )

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.temperature = self.temperature_at(epoch)
        if epoch > 0 and self.temperature != self.temperature_at(epoch - 1):
            # Z = M mean exp(a.n / T) depends on T: re-estimate it on the next batch (decided
            # from the epoch alone, so a resumed run resets exactly where the original did).
            for name in ("z_student", "z_teacher"):
                if hasattr(self, name):
                    getattr(self, name).reset()
        # The detector looks at the epoch just finished (the trainer has no end-of-epoch hook).
        if epoch > 0 and bool(self._cos_count > 0):
            value = float(self._cos_sum / self._cos_count)
            message = collapse_message(value, epoch, COLLAPSE_COSINE)
            if message is not None and is_main():
                warnings.warn(message, EmbeddingCollapseWarning, stacklevel=2)
        self._cos_sum.zero_()
        self._cos_count.zero_()

    # -- per-rank random state: the trainer checkpoints every rank's generators -------------
    def generators(self) -> dict[str, torch.Generator]:
        gens = super().generators()
        if self._sample_gen is not self.generator:  # the device generator (off the CPU)
            gens["sample"] = self._sample_gen
        return gens

    # -- positives ---------------------------------------------------------------------------
    def _positive_objective(self, batch: Batch) -> Objective:
        x, y = batch.images, batch.labels
        kind = self.options.positive_attack
        if kind == "ot":
            return feature_transport(
                self.student,
                x,
                space=self.options.ot_space,
                epsilon=self.options.ot_epsilon,
                iterations=self.options.ot_iterations,
            )
        if kind == "misalign":
            target = self._teacher_embed(self.teacher.forward_features(x)[0])

            def misalign(x_adv: Tensor) -> Tensor:
                s = self.student_head(self.student.forward_features(x_adv)[0])
                return 1.0 - (s * target).sum(dim=1)

            return misalign
        if kind == "kl":
            return kl_to_reference(self.student, self.teacher(x))
        return cross_entropy(self.student, y)

    def positives(self, batch: Batch) -> Tensor:
        if self.options.positive_attack == "none" or self.attack.steps == 0:
            return batch.images
        return self.adversary(
            lambda: self._positive_objective(batch),
            batch.images,
            [self.student, self.student_head, self.teacher_head],
        )

    # -- loss --------------------------------------------------------------------------------
    def _nce(
        self,
        anchor: Tensor,
        positive: Tensor,
        bank: MemoryBank,
        z: NormalizerZ,
        negatives: Tensor,
        weight: Tensor | None,
    ) -> Tensor:
        """NCE with bank rows as negatives, scored as one product anchor @ bank.T and then
        gathered: O(B M d) flops and O(B M) memory instead of an O(B k d) gather (the same
        numbers as `nce_loss(anchor, positive, bank.rows(negatives), ...)`)."""
        with torch.autocast(device_type=anchor.device.type, enabled=False):
            a = anchor.float()
            pos = (a * positive.float()).sum(dim=1)
            neg = (a @ bank.embeddings.T).gather(1, negatives)
        t = self.temperature
        log_z = z.value_from_scores(neg.detach(), t, self.n_data)
        if is_distributed():  # every rank uses rank 0's Z (a scalar: cheap every step)
            dist.broadcast(z.log_z, src=0)
            log_z = z.log_z.clone()
        return nce_loss_from_scores(pos, neg, weight, t, self.n_data, log_z)

    def step(self, batch: Batch) -> Step:
        o = self.options
        y = batch.labels
        x_pos = self.positives(batch)
        with torch.no_grad():
            t_feat, t_logits = self.teacher.forward_features(x_pos)
        t_emb = self._teacher_embed(t_feat)
        if not o.train_teacher_head:
            t_emb = t_emb.detach()
        s_feat, s_logits = self.student.forward_features(x_pos)
        s_emb = self.student_head(s_feat)
        weight = teacher_confidence(t_logits, y) if o.reweight else None
        negatives = self.sampler.sample(y, self.k, generator=self._sample_gen)
        terms: dict[str, Tensor] = {}
        diagnostics: dict[str, Tensor] = {}
        if o.anchor in ("student", "symmetric"):
            terms["nce"] = self._nce(
                s_emb, t_emb.detach(), self.teacher_bank, self.z_student, negatives, weight
            )
        if o.anchor in ("teacher", "symmetric"):
            terms["nce_t"] = self._nce(
                t_emb, s_emb, self.student_bank, self.z_teacher, negatives, weight
            )
        if o.ce_weight > 0:
            diagnostics["ce"] = ce = F.cross_entropy(s_logits.float(), y)
            terms["ce"] = o.ce_weight * ce
        if o.kd_weight > 0:
            kd = kl_divergence(t_logits, s_logits, o.kd_temperature) * o.kd_temperature**2
            diagnostics["kd"] = kd
            terms["kd"] = o.kd_weight * kd
        if weight is not None:
            diagnostics["weight"] = weight.mean()
        diagnostics["pos_cos"] = (s_emb * t_emb).sum(dim=1).mean()
        # Collapse detector: logged per epoch as train_cross_cos, checked in start_epoch.
        cross = cross_class_cosine(s_emb, y)
        seen = torch.isfinite(cross)
        self._cos_sum += torch.where(seen, cross, 0.0)
        self._cos_count += seen.float()
        diagnostics["cross_cos"] = cross
        diagnostics["teacher_acc"] = accuracy(t_logits, y)
        diagnostics["temperature"] = torch.full((), self.temperature, device=s_emb.device)
        self._pending = (batch.indices, t_emb.detach(), s_emb.detach())
        return step_output(terms, diagnostics)

    def after_step(self, batch: Batch) -> None:
        # The banks change only here, after the optimiser step: never inside an attack or an
        # evaluation, which only read them.
        if self._pending is None:
            return
        indices, t_emb, s_emb = self._pending
        self._pending = None
        # Data-parallel ranks apply every rank's rows, so all banks stay identical.
        indices, t_emb, s_emb = (all_gather_cat(t) for t in (indices, t_emb, s_emb))
        if hasattr(self, "teacher_bank"):
            self.teacher_bank.update(indices, t_emb)
        if hasattr(self, "student_bank"):
            self.student_bank.update(indices, s_emb)
