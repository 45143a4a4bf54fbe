"""The random streams of a training run, and which of them data-parallel ranks share.

Shared by every rank: the data order (it decides which rank trains on which samples).
Each rank's own: augmentation, the method's generators (attack starts, negative sampling)
and the global Python / NumPy / torch streams. The trainer checkpoints every rank's own
states, so a resumed run continues each rank's streams where they stood.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for the stream named by `parts` (e.g. "augment", rank), statistically
    independent of every other stream of the run and stable across processes and versions."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rank_generator(seed: int, name: str, rank: int, device: torch.device) -> torch.Generator:
    """A generator on `device` (draws happen where the tensors live) for one rank's stream."""
    return torch.Generator(device).manual_seed(derive_seed(seed, name, rank))


def seed_rank_globals(seed: int, rank: int, *parts: object) -> None:
    """Give rank > 0 its own global Python, NumPy and torch streams (dropout and the like);
    rank 0 keeps its streams, so a one-process run draws what it always drew. `parts` name a
    fresh set (e.g. after a resume on another number of ranks)."""
    if rank == 0:
        return
    s = derive_seed(seed, "globals", rank, *parts)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
