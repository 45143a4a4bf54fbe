"""Checkpoints as plain dicts of tensors and primitives: written atomically, read with
`weights_only=True` onto the CPU, and carrying every RNG state needed to resume bit-for-bit."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gacd.errors import CheckpointError


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write with torch.save to a temp file in the same directory, then rename over `path`,
    so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a gacd model or training checkpoint onto the CPU.

    Always the CPU: RNG states must reach `torch.set_rng_state`, `Generator.set_state` and
    NumPy as CPU tensors whatever device trains, and `load_state_dict` (modules and
    optimisers) moves what belongs on the training device there itself. Nothing is
    unpickled from a file that is not a PyTorch zip archive, and `weights_only` refuses
    Python objects; every failure is a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    if not zipfile.is_zipfile(path):
        kind = "an empty file" if path.stat().st_size == 0 else "not a PyTorch zip archive"
        raise CheckpointError(
            f"{path}: {kind}, so not a gacd model or checkpoint (a YAML or pickle file, or a "
            "truncated copy?)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: holds Python objects that gacd files never contain; refused without "
            "loading them (unpickling them could run code from the file)"
        ) from None
    except Exception as err:  # torch raises several types for corrupt archives
        raise CheckpointError(
            f"{path}: cannot read this PyTorch file ({type(err).__name__}); truncated or corrupt?"
        ) from None
    if not isinstance(blob, dict):
        raise CheckpointError(
            f"{path} holds a {type(blob).__name__}, not a gacd model or checkpoint"
        )
    return blob


def rng_state(
    generators: Mapping[str, torch.Generator], device: torch.device | None = None
) -> dict[str, Any]:
    """This process's random states: Python, NumPy, torch's CPU stream, the CUDA stream of
    `device` (when it is a GPU) and each named generator (CPU or device generators alike:
    their states are CPU byte tensors)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(_encode_python_state(random.getstate())),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(
    state: dict[str, Any],
    generators: Mapping[str, torch.Generator],
    device: torch.device | None = None,
) -> None:
    """Undo `rng_state`: the global streams and each generator in `generators` (a generator
    the state does not hold keeps its seed, with a warning)."""
    random.setstate(_decode_python_state(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    saved = state["generators"]
    for name, generator in generators.items():
        if name in saved:
            generator.set_state(saved[name])
        else:
            warnings.warn(
                f"the checkpoint holds no state for random generator '{name}' "
                f"(it has {', '.join(sorted(saved)) or 'none'}): it continues from its seed",
                stacklevel=2,
            )
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _encode_python_state(state: tuple) -> tuple:
    # (version, tuple of 625 ints, gauss_next): tuples are fine for weights_only loading,
    # but store the ints as a tensor to keep the file small and the types plain.
    version, internal, gauss = state
    return version, torch.tensor(internal, dtype=torch.int64), gauss


def _decode_python_state(encoded: list) -> tuple:
    version, internal, gauss = encoded
    return version, tuple(int(v) for v in internal.tolist()), gauss


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the run's own CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
