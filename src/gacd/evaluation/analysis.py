"""Distilled-feature analysis (paper, "Distilled Feature Analysis", Figures 3-5): how far a
student's inter-class logit correlations are from its teacher's, on natural and adversarial
inputs, and a t-SNE picture of penultimate features of two classes plus adversarial examples.

Everything here returns numbers (numpy arrays and summary dicts); `gacd.evaluation.plots`
draws them and `gacd.commands.analyze` wires models, data and files together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gacd.attacks import AttackSpec, attack_mode, cross_entropy, misclassified, pgd
from gacd.data import DeviceSplit

# Point kinds in a t-SNE embedding, in the paper's colours: blue, green, red.
NATURAL_A, NATURAL_B, ADVERSARIAL_B = 0, 1, 2
POINT_KINDS = ("natural_a", "natural_b", "adversarial_b")


# ---------------------------------------------------------------------------------------------
# Model outputs and attacks


@torch.no_grad()
def model_outputs(
    model: nn.Module, images: Tensor, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features [N, D], logits [N, C]) as float64 numpy, model in eval mode."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for start in range(0, len(images), batch_size):
            f, z = model.forward_features(images[start : start + batch_size])
            feats.append(f.float().cpu())
            logits.append(z.float().cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("no images to run the model on")
    return torch.cat(feats).double().numpy(), torch.cat(logits).double().numpy()


def craft_adversarial(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    *,
    target: int | None = None,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD against `model` (eval mode, left unchanged): untargeted on the cross-entropy of
    `labels`, or - with `target` - targeted, minimising the cross-entropy toward `target`."""
    out = []
    with attack_mode([model], train=False):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            y = labels[start : start + batch_size]
            if target is None:
                objective = cross_entropy(model, y)
                best = misclassified(model, y)
            else:
                goal = torch.full_like(y, target)

                def objective(x_adv: Tensor, goal: Tensor = goal) -> Tensor:
                    return -F.cross_entropy(model(x_adv).float(), goal, reduction="none")

                def best(x_adv: Tensor, goal: Tensor = goal) -> Tensor:
                    return (model(x_adv).argmax(1) == goal).float()

            out.append(pgd(objective, x, spec, generator=generator, per_sample_best=best))
    return torch.cat(out) if out else images.clone()


# ---------------------------------------------------------------------------------------------
# Logit correlations (Figures 3 and 4)


def logit_correlation(logits: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Pearson correlation between the class-logit columns of `logits` [N, C], computed in
    float64: the C x C matrix np.corrcoef(logits.T) would give, plus the constant columns.

    A class whose logit is constant over the samples has no defined correlation (np.corrcoef
    gives nan). Its row and column are set to 0 - "no linear co-variation" - with 1 on the
    diagonal, so the matrix stays a valid correlation matrix (symmetric, unit diagonal, in
    [-1, 1]) and one dead output does not turn every mean into nan; the indices of such
    classes are returned so callers can report them.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need logits [N >= 2, C], got shape {z.shape}")
    x = z - z.mean(axis=0, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=0))
    # Relative tolerance: centring identical float values can leave ~1e-16 residue.
    scale = np.maximum(1.0, np.abs(z).max(axis=0))
    constant = norm <= 1e-9 * scale * np.sqrt(x.shape[0])
    safe = np.where(constant, 1.0, norm)
    corr = (x.T @ x) / np.outer(safe, safe)
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    corr = np.clip((corr + corr.T) / 2.0, -1.0, 1.0)  # exact symmetry despite BLAS rounding
    np.fill_diagonal(corr, 1.0)
    return corr, [int(i) for i in np.flatnonzero(constant)]


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


@dataclass
class CorrelationDifference:
    """Teacher and student logit correlations on one set of inputs, and |difference|."""

    teacher: np.ndarray
    student: np.ndarray
    difference: np.ndarray
    samples: int
    constant_teacher: list[int] = field(default_factory=list)
    constant_student: list[int] = field(default_factory=list)
    teacher_accuracy: float = float("nan")
    student_accuracy: float = float("nan")

    def summary(self) -> dict[str, float | int | list[int]]:
        off = off_diagonal(self.difference)
        return {
            "mean_abs_diff_offdiag": float(off.mean()) if off.size else 0.0,
            "max_abs_diff_offdiag": float(off.max()) if off.size else 0.0,
            "samples": self.samples,
            "teacher_accuracy": self.teacher_accuracy,
            "student_accuracy": self.student_accuracy,
            "constant_classes_teacher": self.constant_teacher,
            "constant_classes_student": self.constant_student,
        }


def correlation_difference(
    teacher_logits: np.ndarray,
    student_logits: np.ndarray,
    labels: np.ndarray | None = None,
) -> CorrelationDifference:
    """|corr(teacher logits) - corr(student logits)| on the same inputs (Figures 3-4)."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {teacher_logits.shape} and student logits "
            f"{student_logits.shape} differ in shape"
        )
    corr_t, const_t = logit_correlation(teacher_logits)
    corr_s, const_s = logit_correlation(student_logits)
    result = CorrelationDifference(
        corr_t, corr_s, np.abs(corr_t - corr_s), len(teacher_logits), const_t, const_s
    )
    if labels is not None:
        result.teacher_accuracy = 100.0 * float((teacher_logits.argmax(1) == labels).mean())
        result.student_accuracy = 100.0 * float((student_logits.argmax(1) == labels).mean())
    return result


def correlation_analysis(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    *,
    attack: Literal["student", "teacher"] = "student",
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, CorrelationDifference]:
    """Correlation differences on natural inputs and on PGD examples of them.

    The adversarial inputs are crafted once (untargeted PGD on the cross-entropy) against the
    student by default - the model whose robustness is under study, as in ARD's and the
    paper's evaluation - or against the teacher, and then fed to both models, so both
    correlation matrices describe the same inputs.
    """
    if attack not in ("student", "teacher"):
        raise ValueError(f"attack must be 'student' or 'teacher', got {attack!r}")
    y = labels.cpu().numpy()
    generator = torch.Generator().manual_seed(seed)
    target_model = student if attack == "student" else teacher
    x_adv = craft_adversarial(
        target_model, images, labels, spec, batch_size=batch_size, generator=generator
    )
    out = {}
    for name, x in (("natural", images), ("adversarial", x_adv)):
        _, logits_t = model_outputs(teacher, x, batch_size)
        _, logits_s = model_outputs(student, x, batch_size)
        out[name] = correlation_difference(logits_t, logits_s, y)
    return out


# ---------------------------------------------------------------------------------------------
# t-SNE of two classes plus adversarial examples (Figure 5)


def sample_class_images(
    split: DeviceSplit, classes: tuple[int, int], n: int, seed: int = 0
) -> list[Tensor]:
    """Up to `n` images of each class in `classes`, drawn with a fixed seed (the same
    images for every model), as float tensors in [0, 1] on the split's device."""
    if n < 1:
        raise ValueError(f"samples must be at least 1, got {n}")
    labels = split.labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size == 0:
            raise ValueError(f"class {c} has no images in this split")
        chosen = np.sort(rng.choice(members, size=min(n, members.size), replace=False))
        out.append(split.batch_at(torch.from_numpy(chosen)).images)
    return out


def feature_summary(
    features: np.ndarray,
    kinds: np.ndarray,
    adv_predictions: np.ndarray,
    classes: tuple[int, int],
) -> dict[str, float | int]:
    """Numbers behind a t-SNE panel, measured in the model's own feature space (t-SNE
    distances are not metric): where adversarial class-b points lie relative to the natural
    class centroids, and how well the natural classes separate."""
    a, b = classes
    fa, fb, fadv = (features[kinds == k] for k in (NATURAL_A, NATURAL_B, ADVERSARIAL_B))
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    between = float(np.linalg.norm(mu_a - mu_b))
    within = float(
        np.concatenate(
            [np.linalg.norm(fa - mu_a, axis=1), np.linalg.norm(fb - mu_b, axis=1)]
        ).mean()
    )
    nan = float("nan")
    if len(fadv):
        to_a = np.linalg.norm(fadv - mu_a, axis=1)
        to_b = np.linalg.norm(fadv - mu_b, axis=1)
        adv = {
            "adv_mean_dist_to_a": float(to_a.mean()),
            "adv_mean_dist_to_b": float(to_b.mean()),
            "adv_frac_nearer_b": float((to_b < to_a).mean()),
            "adv_pred_b_percent": 100.0 * float((adv_predictions == b).mean()),
            "adv_pred_a_percent": 100.0 * float((adv_predictions == a).mean()),
        }
    else:
        adv = dict.fromkeys(
            (
                "adv_mean_dist_to_a",
                "adv_mean_dist_to_b",
                "adv_frac_nearer_b",
                "adv_pred_b_percent",
                "adv_pred_a_percent",
            ),
            nan,
        )
    return {
        "natural_a": len(fa),
        "natural_b": len(fb),
        "adversarial_b": len(fadv),
        "centroid_distance": between,
        "mean_within_class_dist": within,
        # Scale-free, so models with differently scaled features compare: the paper's
        # "larger distances between classes and smaller intra-class distances".
        "separation_ratio": between / within if within > 0 else nan,
        **adv,
    }


@dataclass
class TsneEmbedding:
    """One model's t-SNE panel: coords [N, 2], kinds [N] (NATURAL_A/NATURAL_B/ADVERSARIAL_B)."""

    coords: np.ndarray
    kinds: np.ndarray
    summary: dict[str, float | int]


def embed_tsne(features: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """2-d t-SNE of `features` with a fixed random state (PCA initialisation, so the
    layout is also stable across sklearn versions' random draws)."""
    from sklearn.manifold import TSNE

    if len(features) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(features)}")
    perplexity = float(min(perplexity, len(features) - 1))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(features, dtype=np.float64))


def tsne_analysis(
    models: Mapping[str, nn.Module],
    images_a: Tensor,
    images_b: Tensor,
    classes: tuple[int, int],
    spec: AttackSpec,
    *,
    attacker: nn.Module | None = None,
    targeted: bool = True,
    only_fooled: bool = False,
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, TsneEmbedding]:
    """Figure 5: per model, t-SNE of the penultimate features of natural class-a images,
    natural class-b images and adversarial versions of the class-b images.

    Adversarial class-b images are crafted, as in the paper ("crafted from images from class
    truck [b] ... misclassified as bird [a]"), by PGD targeted toward class a (`targeted`;
    untargeted otherwise). By default each model attacks itself (white-box, so each panel
    shows that model's own worst case); with `attacker` one reference model crafts them
    for every panel (transfer). `only_fooled` keeps only those the crafting model puts in
    class a (the paper's "misclassified as bird"); by default all are kept, so a robust
    model still shows where its adversarial points land.
    """
    a, b = classes
    if a == b:
        raise ValueError(f"the two classes must differ, got {a} and {b}")
    n_eff = min(len(images_a), len(images_b))
    perplexity = max(1.0, min(30.0, n_eff - 1.0))
    labels_b = torch.full((len(images_b),), b, dtype=torch.long, device=images_b.device)
    target = a if targeted else None

    def craft(model: nn.Module) -> Tensor:
        # The same random start for every model: panels differ by model, not by noise.
        generator = torch.Generator().manual_seed(seed)
        x_adv = craft_adversarial(
            model,
            images_b,
            labels_b,
            spec,
            target=target,
            batch_size=batch_size,
            generator=generator,
        )
        if only_fooled:
            _, logits = model_outputs(model, x_adv, batch_size)
            x_adv = x_adv[torch.from_numpy(logits.argmax(1) == a).to(x_adv.device)]
        return x_adv

    shared_adv = craft(attacker) if attacker is not None else None
    out = {}
    for name, model in models.items():
        x_adv = shared_adv if shared_adv is not None else craft(model)
        feats_a, _ = model_outputs(model, images_a, batch_size)
        feats_b, _ = model_outputs(model, images_b, batch_size)
        if len(x_adv):
            feats_adv, logits_adv = model_outputs(model, x_adv, batch_size)
        else:
            feats_adv = np.zeros((0, feats_a.shape[1]))
            logits_adv = np.zeros((0, 1))
        features = np.concatenate([feats_a, feats_b, feats_adv])
        kinds = np.concatenate(
            [
                np.full(len(feats_a), NATURAL_A),
                np.full(len(feats_b), NATURAL_B),
                np.full(len(feats_adv), ADVERSARIAL_B),
            ]
        )
        summary = feature_summary(features, kinds, logits_adv.argmax(1), classes)
        summary["perplexity"] = float(min(perplexity, len(features) - 1))
        coords = embed_tsne(features, perplexity, seed)
        out[name] = TsneEmbedding(coords, kinds, summary)
    return out
