"""RobustBench checkpoints as gacd models: `robustbench:<dataset>/<threat>/<name>`.

A checkpoint is read from `ROOT/<dataset>/<threat>/<name>.pt`, the layout robustbench's own
`load_model(model_dir=ROOT)` writes, so a RobustBench download folder is a zoo root as is.
ROOT is the `zoo_root` argument (a config key or a command-line flag), else `GACD_ZOO`.
Parameters are renamed into our own architecture definitions, and every parameter and
buffer must be accounted for: a file of another architecture or shape is an error naming
the keys, never a partial load. The result is an ordinary `ImageClassifier` ([0, 1] input,
the entry's normalisation inside, `forward_features` = the pooled penultimate features)
built through the registry, so it can be exported, attacked and distilled like any other.
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gacd.errors import ZooError
from gacd.models.archs import build_model
from gacd.models.classifier import ImageClassifier
from gacd.models.zoo_download import download_checkpoint, gdrive_url
from gacd.models.zoo_table import ENTRIES, ZooEntry

PREFIX = "robustbench:"
ENV_ROOT = "GACD_ZOO"
EXAMPLE = "robustbench:cifar10/Linf/Wang2023Better_WRN-28-10"


def is_zoo_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def zoo_entries(dataset: str | None = None, threat: str | None = None) -> list[ZooEntry]:
    """The supported entries, optionally of one dataset and threat model, in table order."""
    out = list(ENTRIES)
    if dataset is not None:
        _check_choice("dataset", dataset, sorted({e.dataset for e in ENTRIES}))
        out = [e for e in out if e.dataset == dataset]
    if threat is not None:
        _check_choice("threat model", threat, sorted({e.threat for e in ENTRIES}))
        out = [e for e in out if e.threat == threat]
    return out


def _check_choice(what: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ZooError(f"unknown {what} '{value}'; RobustBench entries here: {', '.join(allowed)}")


def _bad_id(value: str) -> str:
    return (
        f"'{value}' is not a RobustBench id; expected {PREFIX}<dataset>/<threat>/<name>, "
        f"e.g. {EXAMPLE}"
    )


def find_entry(zoo_id: str) -> ZooEntry:
    """The table entry of `robustbench:<dataset>/<threat>/<name>`."""
    if not is_zoo_id(zoo_id):
        raise ZooError(_bad_id(zoo_id))
    parts = zoo_id[len(PREFIX) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise ZooError(_bad_id(zoo_id))
    dataset, threat, name = parts
    datasets = sorted({e.dataset for e in ENTRIES})
    if dataset not in datasets:
        raise ZooError(f"{zoo_id}: unknown dataset '{dataset}'; allowed: {', '.join(datasets)}")
    threats = sorted({e.threat for e in ENTRIES if e.dataset == dataset})
    if threat not in threats:
        raise ZooError(
            f"{zoo_id}: unknown threat model '{threat}' for {dataset}; allowed: "
            f"{', '.join(threats)}"
        )
    for entry in ENTRIES:
        if (entry.dataset, entry.threat, entry.name) == (dataset, threat, name):
            return entry
    names = [e.name for e in ENTRIES if (e.dataset, e.threat) == (dataset, threat)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ZooError(
        f"{zoo_id}: '{name}' is not a supported {dataset}/{threat} entry{hint} "
        "(`gacd zoo` lists every supported entry; RobustBench architectures not listed there "
        "are not implemented in gacd)"
    )


def resolve_zoo_root(zoo_root: str | Path | None = None) -> Path:
    """`zoo_root` if given, else the GACD_ZOO environment variable."""
    root = zoo_root if zoo_root not in (None, "") else os.environ.get(ENV_ROOT)
    if not root:
        raise ZooError(
            "no zoo root for RobustBench checkpoints: set zoo_root in the config (zoo_root=DIR), "
            f"pass --zoo-root DIR, or set {ENV_ROOT}=DIR; checkpoints are read from "
            "DIR/<dataset>/<threat>/<name>.pt, the layout of robustbench's "
            "load_model(model_dir=DIR)"
        )
    return Path(root).expanduser()


def checkpoint_path(entry: ZooEntry, root: str | Path) -> Path:
    return Path(root) / entry.dataset / entry.threat / f"{entry.name}.pt"


def fetch_hint(entry: ZooEntry, root: Path) -> str:
    path = checkpoint_path(entry, root)
    return (
        f"fetch it with `gacd zoo {entry.id} --download --zoo-root {root}` (or download=true "
        f"from Python, zoo_download=true in a config), or download {gdrive_url(entry)} and "
        f"save it as {path}; robustbench's load_model('{entry.name}', model_dir='{root}', "
        f"dataset='{entry.dataset}', threat_model='{entry.threat}') writes the same file"
    )


def locate_checkpoint(
    zoo_id: str,
    zoo_root: str | Path | None = None,
    download: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """The checkpoint file of `zoo_id`, downloaded first when missing and `download` is set."""
    entry = find_entry(zoo_id)
    root = resolve_zoo_root(zoo_root)
    path = checkpoint_path(entry, root)
    if path.is_file():
        return path
    if download:
        return download_checkpoint(entry, path, log=log)
    raise ZooError(
        f"RobustBench checkpoint of {entry.id} not found: expected {path}; "
        + fetch_hint(entry, root)
    )


def build_zoo_model(entry: ZooEntry) -> ImageClassifier:
    """Our architecture for `entry`, randomly initialised (its `spec` rebuilds it)."""
    return build_model(
        entry.arch,
        in_channels=len(entry.mean),
        num_classes=entry.num_classes,
        mean=entry.mean,
        std=entry.std,
        **entry.kwargs,
    )


def load_zoo_model(
    zoo_id: str,
    zoo_root: str | Path | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> ImageClassifier:
    """Load a RobustBench checkpoint into our architecture; returned in eval mode."""
    entry = find_entry(zoo_id)
    path = locate_checkpoint(zoo_id, zoo_root, download, log)
    model = build_zoo_model(entry)
    load_zoo_state(model, read_checkpoint(path), entry, path)
    model.zoo_id = entry.id  # type: ignore[assignment]
    return model.to(device).eval()


def zoo_meta(zoo_id: str) -> dict[str, Any]:
    """What `load_model_meta` gives for an exported model, for a RobustBench entry."""
    entry = find_entry(zoo_id)
    return {
        "dataset": entry.dataset,
        "zoo": entry.id,
        "threat": entry.threat,
        "architecture": entry.architecture,
        "robustbench_clean": entry.clean,
        "robustbench_autoattack": entry.autoattack,
    }


# ---------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A RobustBench file's state dict: bare or under 'state_dict', with robustbench's
    'module.' (DataParallel) and then 'model.' prefixes stripped from the keys."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ZooError(
            f"{path} pickles Python objects besides tensors, which gacd does not unpickle "
            f"(weights_only=True: unpickling can run code) ({str(err).splitlines()[0]}). If you "
            'trust the file, keep only its weights: python -c "import torch; '
            f"c = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save(c.get('state_dict', c), '{path}')\""
        ) from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ZooError(
            f"cannot read {path} ({err}); it is probably truncated or not a checkpoint: "
            "delete it and download it again"
        ) from None
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in blob.items()
    ):
        raise ZooError(
            f"{path} holds no state dict (a mapping of names to tensors, bare or under "
            "'state_dict'); it is not a RobustBench checkpoint"
        )
    out: dict[str, Tensor] = {}
    for key, value in blob.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


# Per family: top-level prefixes, the block prefix (stage, block; stage numbers offset to
# count from 0), and block-level renames, from RobustBench's module names to ours.
_Rules = tuple[tuple[tuple[str, str], ...], str, int, tuple[tuple[str, str], ...]]
_RULES: dict[str, _Rules] = {
    "dm_wrn": (
        (("init_conv.", "stem."), ("batchnorm.", "head.0."), ("logits.", "classifier.")),
        r"layer\.(\d+)\.block\.(\d+)\.",
        0,
        (("batchnorm_0", "bn1"), ("conv_0", "conv1"), ("batchnorm_1", "bn2"), ("conv_1", "conv2")),
    ),
    "dm_preact": (
        (("conv_2d.", "stem."), ("batchnorm.", "head.0."), ("logits.", "classifier.")),
        r"layer_(\d+)\.(\d+)\.",
        0,
        (
            ("batchnorm_0", "bn1"),
            ("conv_2d_1", "conv1"),
            ("batchnorm_1", "bn2"),
            ("conv_2d_2", "conv2"),
        ),
    ),
    "wrn": (
        (("conv1.", "stem."), ("bn1.", "head.0."), ("fc.", "classifier.")),
        r"block(\d+)\.layer\.(\d+)\.",
        -1,
        (("convShortcut", "shortcut"),),
    ),
    "resnet": (
        (("conv1.", "stem.0."), ("bn1.", "stem.1."), ("linear.", "classifier.")),
        r"layer(\d+)\.(\d+)\.",
        -1,
        (),
    ),
    "preact": (
        (("conv1.", "stem."), ("bn.", "head.0."), ("linear.", "classifier.")),
        r"layer(\d+)\.(\d+)\.",
        -1,
        (("shortcut.0", "shortcut"),),
    ),
}
# Normalisation buffers some RobustBench model classes register (mu / sigma).
_NORM_KEYS = {"mu": "mean", "sigma": "std", "mean": "mean", "std": "std"}


def rename_key(family: str, key: str) -> str:
    """A RobustBench parameter name in our architecture's naming (unchanged if unknown)."""
    top, block, offset, renames = _RULES[family]
    match = re.match(block, key)
    if match:
        rest = key[match.end() :]
        for old, new in renames:
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        return f"stages.{int(match.group(1)) + offset}.{match.group(2)}.{rest}"
    for old, new in top:
        if key.startswith(old):
            return new + key[len(old) :]
    return _NORM_KEYS.get(key, key)


def load_zoo_state(
    model: ImageClassifier, state: dict[str, Tensor], entry: ZooEntry, path: str | Path
) -> None:
    """Load RobustBench-named `state` into `model`; ZooError, loading nothing, unless every
    key finds its place with the right shape."""
    expected = model.state_dict()
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in entry.unused_prefixes):
            continue
        ours = rename_key(entry.family, key)
        mapped[ours], origin[ours] = value, key
    for key in ("mean", "std"):
        if key not in mapped:  # the entry's constants, as RobustBench's constructor sets them
            mapped[key] = expected[key]
        elif mapped[key].numel() == expected[key].numel():
            mapped[key] = mapped[key].reshape(expected[key].shape)
    for key, value in expected.items():
        # BatchNorm's batch counter only matters in training with momentum=None; files
        # saved by old PyTorch versions lack it.
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = value
    missing = [k for k in expected if k not in mapped]
    unexpected = [origin.get(k, k) for k in mapped if k not in expected]
    mismatched = [
        f"{origin.get(k, k)} {tuple(mapped[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 4 else ""
                problems.append(f"{label}: {', '.join(keys[:4])}{more}")
        raise ZooError(
            f"{path} does not fit {entry.id} ({entry.architecture}, {entry.num_classes} "
            f"classes): {'; '.join(problems)}. Nothing was loaded; is it another model's file?"
        )
    model.load_state_dict(mapped, strict=True)


# ---------------------------------------------------------------------------- the table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def zoo_table(entries: list[ZooEntry] | None = None, markdown: bool = False) -> str:
    """The supported entries with RobustBench's published clean / AutoAttack accuracy."""
    entries = list(ENTRIES) if entries is None else entries
    header = ["id", "architecture", "clean", "AutoAttack", "eps"]
    rows = [[e.id, e.architecture, _pct(e.clean), _pct(e.autoattack), e.budget] for e in entries]
    note = (
        "Accuracies (%) as RobustBench publishes them (its model_info files; — where we "
        "could not transcribe them); checkpoints load from ZOO_ROOT/<dataset>/<threat>/"
        "<name>.pt."
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([*lines, "", note])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3}

    def fmt(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows), "", note])


def describe_entry(entry: ZooEntry, zoo_root: str | Path | None = None) -> str:
    """Several lines about one entry: architecture, figures, where its file goes."""
    lines = [
        entry.id,
        f"  architecture: {entry.architecture} ({entry.num_classes} classes), gacd arch "
        f"'{entry.arch}' {entry.kwargs}",
        f"  normalisation: mean {entry.mean}, std {entry.std}",
        f"  RobustBench: clean {_pct(entry.clean)}%, AutoAttack {_pct(entry.autoattack)}% "
        f"({entry.threat}, eps {entry.budget})",
        f"  Google Drive: {gdrive_url(entry)}",
    ]
    try:
        root = resolve_zoo_root(zoo_root)
    except ZooError:
        where = f"<zoo root>/{entry.dataset}/{entry.threat}/{entry.name}.pt"
        lines.append(f"  file: {where} (no zoo root set: --zoo-root DIR or {ENV_ROOT}=DIR)")
    else:
        path = checkpoint_path(entry, root)
        lines.append(f"  file: {path} ({'present' if path.is_file() else 'missing'})")
    return "\n".join(lines)
