"""`gacd evaluate`: an exported model (or a RobustBench id), a dataset split, a list of
attacks -> JSON + Markdown."""

from __future__ import annotations

from typing import Any

from gacd.config import ConfigError, DataConfig, EvalConfig, RunConfig
from gacd.engine.export import load_model, load_model_meta, model_file
from gacd.evaluation.results import evaluate_model, evaluation_markdown, write_results
from gacd.training import prepare_data, resolve_device

# AutoAttack this far below PGD (percentage points) suggests PGD was fooled by gradient masking.
MASKING_GAP = 5.0


def masking_warnings(accuracy: dict[str, float]) -> list[str]:
    if "autoattack" not in accuracy:
        return []
    aa = accuracy["autoattack"]
    out = []
    for name, acc in accuracy.items():
        if name.startswith(("pgd", "cw")) and acc - aa > MASKING_GAP:
            out.append(
                f"AutoAttack accuracy {aa:.2f}% is {acc - aa:.2f} points below {name} "
                f"({acc:.2f}%): {name} overestimates robustness; trust the AutoAttack number. "
                "If AutoAttack's gradient-free Square attack is what closes the gap, suspect "
                "gradient masking; if APGD does, the fixed-step PGD was just weaker"
            )
    return out


def evaluate_command(
    *,
    model_path: str,
    dataset: str | None,
    root: str | None,
    split: str,
    attacks: list[str],
    eps: float | None,
    step_size: float | None,
    restarts: int = 1,
    batch_size: int = 512,
    max_samples: int | None = None,
    out: str | None = None,
    device: str = "auto",
    seed: int = 0,
    zoo_root: str | None = None,
    download: bool = False,
) -> dict[str, Any]:
    model_file(model_path, zoo_root, download)  # present (or fetched) before any work
    if not attacks:
        raise ConfigError("--attacks is empty")
    # The same range checks as a run config's evaluation section (one place for each rule).
    EvalConfig(
        attacks=attacks, eps=eps, step_size=step_size, restarts=restarts, max_samples=max_samples
    )
    DataConfig(eval_batch_size=batch_size)
    meta = load_model_meta(model_path)
    dataset = dataset or meta.get("dataset")
    if dataset is None:
        raise ConfigError(f"{model_path} does not record its dataset: pass --dataset")
    config = RunConfig(device=device)
    config.data.name = dataset
    config.data.root = root
    if dataset == meta.get("dataset"):  # the same label subset and size the model saw
        config.data.classes = meta.get("classes")
        config.data.resize = meta.get("resize")
    torch_device = resolve_device(device)
    data = prepare_data(config, torch_device)
    model = load_model(model_path, torch_device, zoo_root=zoo_root)
    eps = data.defaults.eps if eps is None else eps
    step_size = data.defaults.step_size if step_size is None else step_size
    result = evaluate_model(
        model,
        data.split(split),
        attacks,
        eps=eps,
        step_size=step_size,
        restarts=restarts,
        batch_size=batch_size,
        seed=seed,
        max_samples=max_samples,
        progress=True,
    )
    payload = {
        "model": str(model_path),
        "dataset": dataset,
        "split": split,
        **result,
        "warnings": masking_warnings(result["accuracy"]),
    }
    if out is not None:
        md = evaluation_markdown(f"Evaluation of {model_path} on {dataset} ({split})", result)
        if payload["warnings"]:
            md += "\n" + "\n".join(f"> **Warning:** {w}" for w in payload["warnings"]) + "\n"
        write_results(out, "evaluation", payload, md)
    return payload
