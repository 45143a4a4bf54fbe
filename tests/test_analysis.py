"""Feature analysis (paper Figures 3-5): logit-correlation differences, t-SNE, plots, and
the `gacd analyze` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gacd.attacks import AttackSpec
from gacd.cli import main
from gacd.commands.analyze import run_analysis, summary_lines
from gacd.config import load_run_config
from gacd.data import DeviceSplit, read_dataset
from gacd.engine.export import export_model, load_model
from gacd.evaluation.analysis import (
    ADVERSARIAL_B,
    NATURAL_A,
    NATURAL_B,
    correlation_analysis,
    logit_correlation,
    sample_class_images,
    tsne_analysis,
)
from gacd.evaluation.plots import line_plot_with_spread
from gacd.models import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEC = AttackSpec(eps=0.2, step_size=0.07, steps=3)


def _train_tiny(path: Path, seed: int, steps: int) -> Path:
    """A small digits CNN trained for a few Adam steps (about a second): enough for logits
    with real inter-class structure, far cheaper than a full `gacd train` run."""
    torch.manual_seed(seed)
    raw = read_dataset("digits")
    x = torch.from_numpy(raw.train.images).float() / raw.pixel_max
    y = torch.from_numpy(raw.train.labels)
    model = build_model(
        "digits_cnn_small", in_channels=1, num_classes=10, mean=raw.mean, std=raw.std
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    export_model(model.eval(), path, meta={"dataset": "digits", "classes": None})
    return path


@pytest.fixture(scope="module")
def tiny_models(
    digits_teacher_path: Path,
    digits_undefended_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The session's PGD-AT teacher and undefended model, plus a barely trained student."""
    student = _train_tiny(tmp_path_factory.mktemp("analysis_models") / "student.pt", 1, 25)
    return {
        "teacher": digits_teacher_path,
        "undefended": digits_undefended_path,
        "student": student,
    }


@pytest.fixture(scope="module")
def digits_test() -> DeviceSplit:
    raw = read_dataset("digits")
    return DeviceSplit(raw.test, raw.pixel_max, "cpu")


def _explicit_correlation(logits: np.ndarray) -> np.ndarray:
    """Pearson's formula written out, float64, one pair at a time."""
    z = logits.astype(np.float64)
    n, c = z.shape
    out = np.empty((c, c))
    for i in range(c):
        for j in range(c):
            di = z[:, i] - z[:, i].sum() / n
            dj = z[:, j] - z[:, j].sum() / n
            out[i, j] = (di * dj).sum() / np.sqrt((di * di).sum() * (dj * dj).sum())
    return out


def _check_correlation_matrix(corr: np.ndarray, c: int) -> None:
    assert corr.shape == (c, c)
    assert np.array_equal(corr, corr.T)
    assert np.array_equal(np.diag(corr), np.ones(c))
    assert np.all(np.isfinite(corr))
    assert corr.min() >= -1.0 and corr.max() <= 1.0


def test_logit_correlation_matches_pearson_formula() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    logits = rng.normal(size=(200, 6)) @ mixing + rng.normal(size=6) * 10  # correlated, offset
    corr, constant = logit_correlation(logits.astype(np.float32))
    _check_correlation_matrix(corr, 6)
    assert constant == []
    expected = _explicit_correlation(logits.astype(np.float32))
    np.testing.assert_allclose(corr, expected, atol=1e-12)
    np.testing.assert_allclose(corr, np.corrcoef(logits.astype(np.float32).T), atol=1e-12)


def test_logit_correlation_constant_class_is_zero_not_nan() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 4))
    logits[:, 2] = 3.7  # a dead class output: np.corrcoef gives nan for its row/column
    corr, constant = logit_correlation(logits)
    assert constant == [2]
    _check_correlation_matrix(corr, 4)
    assert np.all(corr[2, [0, 1, 3]] == 0.0) and np.all(corr[[0, 1, 3], 2] == 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.corrcoef(logits.T)
    keep = [0, 1, 3]
    np.testing.assert_allclose(corr[np.ix_(keep, keep)], reference[np.ix_(keep, keep)])


def test_correlation_analysis_shapes_and_self_difference(
    tiny_models: dict[str, Path], digits_test: DeviceSplit
) -> None:
    teacher = load_model(tiny_models["teacher"])
    student = load_model(tiny_models["student"])
    batch = digits_test.batch_at(torch.arange(120))
    result = correlation_analysis(teacher, student, batch.images, batch.labels, SPEC)
    with torch.no_grad():
        teacher_logits = teacher(batch.images).double().numpy()
    for kind in ("natural", "adversarial"):
        r = result[kind]
        for corr in (r.teacher, r.student):
            _check_correlation_matrix(corr, 10)
        assert np.array_equal(r.difference, np.abs(r.teacher - r.student))
        summary = r.summary()
        assert 0.0 <= summary["mean_abs_diff_offdiag"] <= summary["max_abs_diff_offdiag"] <= 2.0
        assert summary["samples"] == 120
    # Independent check: the teacher's natural correlations from its logits, by hand.
    np.testing.assert_allclose(
        result["natural"].teacher, _explicit_correlation(teacher_logits), atol=1e-6
    )
    # The attack hurts the student it was crafted on.
    assert result["adversarial"].student_accuracy < result["natural"].student_accuracy

    same = correlation_analysis(student, student, batch.images, batch.labels, SPEC)
    for kind in ("natural", "adversarial"):
        assert np.array_equal(same[kind].difference, np.zeros((10, 10)))
        assert same[kind].summary()["mean_abs_diff_offdiag"] == 0.0


def test_tsne_point_counts_and_summary(
    tiny_models: dict[str, Path], digits_test: DeviceSplit
) -> None:
    n = 7
    images_a, images_b = sample_class_images(digits_test, (2, 9), n, seed=0)
    again_a, _ = sample_class_images(digits_test, (2, 9), n, seed=0)
    assert torch.equal(images_a, again_a)  # fixed seed: the same images every time
    models = {k: load_model(p) for k, p in tiny_models.items() if k != "student"}
    # Each model attacks itself, targeted toward class a, with a budget that fools the
    # undefended model on most samples (PGD-10 at the digits eps).
    spec = AttackSpec(eps=0.2, step_size=0.05, steps=10)
    result = tsne_analysis(models, images_a, images_b, (2, 9), spec)
    for emb in result.values():
        assert emb.coords.shape == (3 * n, 2) and np.all(np.isfinite(emb.coords))
        counts = {k: int((emb.kinds == k).sum()) for k in (NATURAL_A, NATURAL_B, ADVERSARIAL_B)}
        assert counts == {NATURAL_A: n, NATURAL_B: n, ADVERSARIAL_B: n}
        s = emb.summary
        assert 0.0 <= s["adv_frac_nearer_b"] <= 1.0
        assert s["adv_pred_a_percent"] + s["adv_pred_b_percent"] <= 100.0 + 1e-9
        assert s["perplexity"] == n - 1
    # The robust teacher keeps more adversarial b images in class b than the undefended
    # model does (measured: 71% against 14%), the paper's Figure 5a vs 5b.
    teacher, undefended = result["teacher"].summary, result["undefended"].summary
    assert teacher["adv_pred_b_percent"] > undefended["adv_pred_b_percent"]

    fooled = tsne_analysis(
        {"undefended": models["undefended"]}, images_a, images_b, (2, 9), spec, only_fooled=True
    )["undefended"]
    n_adv = int((fooled.kinds == ADVERSARIAL_B).sum())
    assert 0 < n_adv <= n and fooled.coords.shape == (2 * n + n_adv, 2)
    assert fooled.summary["adv_pred_a_percent"] == 100.0  # only points classified as a kept


def test_run_analysis_writes_figures_and_json(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    payload = run_analysis(
        load_run_config(None, [f"out={tmp_path}", "device=cpu"]),
        teacher=str(tiny_models["teacher"]),
        models=[
            ("student", str(tiny_models["student"])),
            ("undefended", str(tiny_models["undefended"])),
        ],
        classes_pair=(2, 9),
        samples=6,
        corr_samples=80,
        steps=3,
    )
    for name in ("correlation_student.png", "correlation_undefended.png", "tsne.png"):
        data = (tmp_path / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    stored = json.loads((tmp_path / "analysis.json").read_text())
    assert stored == payload
    pair = stored["correlation"]["models"]["student"]
    for kind in ("natural", "adversarial"):
        t = np.array(pair[kind]["corr_teacher"])
        s = np.array(pair[kind]["corr_student"])
        _check_correlation_matrix(t, 10)
        np.testing.assert_array_equal(np.array(pair[kind]["difference"]), np.abs(t - s))
        off = np.abs(t - s)[~np.eye(10, dtype=bool)]
        assert pair[kind]["summary"]["mean_abs_diff_offdiag"] == pytest.approx(off.mean())
    tsne = stored["tsne"]["models"]
    assert list(tsne) == ["teacher", "student", "undefended"]
    for emb in tsne.values():
        assert len(emb["coords"]) == len(emb["kinds"]) == 18
        assert emb["summary"]["adversarial_b"] == 6
    assert any("student" in line for line in summary_lines(payload))


def test_cli_analyze_runs_and_rejects_bad_input(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t, s = str(tiny_models["teacher"]), str(tiny_models["student"])
    small = ["--samples", "4", "--corr-samples", "40", "--steps", "2", "--device", "cpu"]
    out = tmp_path / "ok"
    assert main(["analyze", "--teacher", t, "--models", f"s={s}", "--out", str(out), *small]) == 0
    assert "mean |diff|" in capsys.readouterr().out
    assert (out / "correlation_s.png").is_file() and (out / "analysis.json").is_file()

    mnist_model = tmp_path / "mnist_meta.pt"
    export_model(load_model(s), mnist_model, meta={"dataset": "mnist"})
    cases = {
        "model file not found": ["--models", f"s={tmp_path / 'missing.pt'}"],
        "out of range": ["--models", f"s={s}", "--classes-pair", "2,10"],
        "different datasets": ["--models", f"s={mnist_model}"],
        "name=path": ["--models", s],
    }
    for message, args in cases.items():
        code = main(["analyze", "--teacher", t, *args, "--out", str(tmp_path / "bad"), *small])
        assert code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "analysis.json").exists()


def test_line_plot_with_spread_writes_png(tmp_path: Path) -> None:
    k = [16, 64, 256, 1024]
    series = {
        "gacd": ([50.0, 55.0, 57.0, 58.0], [1.0, 0.5, 0.8, 0.3]),
        "single seed": ([40.0, 41.0, 43.0, 42.0], [float("nan")] * 4),
    }
    path = line_plot_with_spread(
        k, series, "negatives k", "PGD accuracy (%)", tmp_path / "k.png", log_x=True
    )
    assert Path(path).read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="means"):
        line_plot_with_spread(k, {"bad": ([1.0], [0.0])}, "x", "y", tmp_path / "bad.png")
