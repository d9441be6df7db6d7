"""Class balancing for the imbalanced slice set: the paper's oversampling of positives, or a weighted sampler."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from coronary_calcium.errors import InputError

BALANCE_MODES = ("oversample", "weighted", "none")


def _labels(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.fromiter((r["label"] for r in records), dtype=np.int64, count=len(records))


def _check_mode(mode: str) -> None:
    if mode not in BALANCE_MODES:
        raise InputError("balance", f"unknown mode {mode!r}; valid: {', '.join(BALANCE_MODES)}")


def balanced_indices(records: Sequence[dict[str, Any]], mode: str = "oversample") -> list[int]:
    """Dataset indices for one epoch: with "oversample", each minority slice repeats until both classes are equal
    in number (the random augmentation makes the copies differ, as in the paper); otherwise every index once.

    Used with `torch.utils.data.Subset`, so a cached slice is cached once however often it is repeated.
    """
    _check_mode(mode)
    index = list(range(len(records)))
    if mode != "oversample":
        return index
    labels = _labels(records)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        return index
    minority = int(np.argmin(counts))
    members = np.flatnonzero(labels == minority)
    need = int(counts.max() - counts.min())
    extra = np.resize(members, need)  # whole repeats of every minority slice, then a deterministic remainder
    return index + extra.tolist()


def make_sampler(records: Sequence[dict[str, Any]], mode: str = "oversample", seed: int = 0) -> WeightedRandomSampler | None:
    """A `WeightedRandomSampler` drawing both classes equally often for "weighted"; None (shuffle) otherwise."""
    _check_mode(mode)
    if mode != "weighted":
        return None
    labels = _labels(records)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = 1.0 / np.maximum(counts[labels], 1.0)
    return WeightedRandomSampler(
        torch.as_tensor(weights), num_samples=len(records), replacement=True, generator=torch.Generator().manual_seed(seed)
    )
