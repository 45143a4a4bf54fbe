"""The issue's goal check on the digits TEST split: GACD (linear; the natural probe and, where
the ablation trained it, the adversarially trained probe) against the teacher and GACD+AFT
against ARD, under the project's `autoattack` evaluation, one row per seed and the
mean +- std. Run it once, after the defaults were chosen on validation
(benchmarks/gacd_ablation.py), on that script's output directory:

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/gacd_goal_check.py \\
        --out /tmp/gacd_ablation --teacher TEACHER/model_best.pt --variant default
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from gacd.config import load_run_config
from gacd.engine.export import load_model
from gacd.evaluation.results import evaluate_model
from gacd.training import prepare_data, train

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["natural", "pgd20", "autoattack"]
QUIET = ["device=cpu", "progress=false"]


def _evaluate(path: Path, seed: int) -> dict[str, float]:
    cache = path.parent / f"goal_check_test_seed{seed}.json"  # re-runs skip done evaluations
    if cache.is_file():
        return json.loads(cache.read_text())
    data = prepare_data(load_run_config(None, ["device=cpu"]), torch.device("cpu"))
    model = load_model(str(path)).eval()
    result = evaluate_model(model, data.test, ATTACKS, eps=0.2, step_size=0.05, seed=seed)
    accuracy = {k: float(v) for k, v in result["accuracy"].items()}
    cache.write_text(json.dumps(accuracy))
    return accuracy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="benchmarks/gacd_ablation.py's output directory")
    p.add_argument("--teacher", required=True)
    p.add_argument("--variant", default="default", help="the ablation variant holding the runs")
    p.add_argument("--aft", default="aft_head", help="AFT directory name in the variant's runs")
    p.add_argument(
        "--adv-probe",
        default="linear_probe_adv",
        help="directory of the adversarially trained probe in the variant's runs (row skipped "
        "where it is missing)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--ard-epochs",
        type=int,
        nargs="+",
        default=[],
        help="also train and check ARD for these many epochs (a budget like GACD's)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    rows: dict[str, list[dict[str, float]]] = {"teacher": [_evaluate(Path(args.teacher), 0)]}
    for seed in args.seeds:
        runs = out / args.variant / f"seed{seed}"
        rows.setdefault("GACD (linear)", []).append(
            _evaluate(runs / "linear" / "model_best.pt", seed)
        )
        adv_probe = runs / args.adv_probe / "model_best.pt"
        if adv_probe.is_file():
            rows.setdefault("GACD (adv. probe)", []).append(_evaluate(adv_probe, seed))
        rows.setdefault("GACD+AFT", []).append(_evaluate(runs / args.aft / "model_best.pt", seed))
        for epochs in [None, *args.ard_epochs]:
            name = "ARD" if epochs is None else f"ARD, {epochs} epochs"
            ard_dir = out / ("ard" if epochs is None else f"ard_epochs{epochs}") / f"seed{seed}"
            overrides = [] if epochs is None else [f"optim.epochs={epochs}"]
            config = load_run_config(
                str(ROOT / "configs" / "digits" / "ard.yaml"),
                [f"out={ard_dir}", f"teacher={args.teacher}", f"seed={seed}", *QUIET, *overrides],
            )
            train(config, resume=True)
            rows.setdefault(name, []).append(_evaluate(ard_dir / "model_best.pt", seed))
    (out / "goal_check.json").write_text(json.dumps(rows, indent=1))
    print("digits test split, eps 0.2; mean ± std over seeds", args.seeds)
    print("| model | natural | PGD-20 | AutoAttack |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        cells = []
        for attack in ATTACKS:
            values = [r[attack] for r in results]
            sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{sd}")
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
