"""Reproducible splits from the raw annotations alone: seeded, by patient, nested subsets.

This is the rule of `cxrbench prepare --splits patient`; the default split is the shipped reference
lists (`split_scheme.py`), which reuses `DEFAULT_SEED` for its train subsets.

A split is a function of (sorted patient ids, their image counts, seed): the same raw annotation
files always give the same split. Train subsets (1%, 10%, 30%...) are prefixes of one seeded
permutation of the train images, so smaller subsets are nested in larger ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrbench.io_utils import sha256_text

DEFAULT_SEED = 20220706  # fixed protocol seed; changing it changes the protocol hash


def split_by_patient(
    patient_ids: Sequence[str], fractions: Mapping[str, float], seed: int = DEFAULT_SEED
) -> dict[str, np.ndarray]:
    """Assign every image to a split so that no patient spans two splits.

    Patients are shuffled with a seeded RNG; splits take consecutive patients until their image
    count reaches round(fraction * n_images); the last split takes the rest. Returns sorted image
    indices per split (in the order of `fractions`).
    """
    patient_ids = np.asarray([str(p) for p in patient_ids])
    unique, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    cumulative = np.cumsum(counts[order])
    names = list(fractions)
    targets = np.cumsum([round(fractions[name] * len(patient_ids)) for name in names[:-1]])
    cut_points = np.searchsorted(cumulative, targets, side="left") + 1
    cut_points = np.minimum(cut_points, len(unique))
    bounds = [0, *cut_points.tolist(), len(unique)]
    split_of_patient = np.empty(len(unique), dtype=np.int64)
    for k in range(len(names)):
        split_of_patient[order[bounds[k] : max(bounds[k], bounds[k + 1])]] = k
    image_split = split_of_patient[inverse]
    return {name: np.flatnonzero(image_split == k) for k, name in enumerate(names)}


def nested_subsets(
    n_train: int, percents: Sequence[float], seed: int = DEFAULT_SEED, minimum: int = 2
) -> dict[str, np.ndarray]:
    """Nested train subsets: prefixes of one seeded permutation (keys like "1", "10", "30")."""
    order = np.random.default_rng(seed + 1).permutation(n_train)
    subsets = {}
    for pct in sorted(percents):
        k = min(n_train, max(minimum, round(pct / 100.0 * n_train)))
        subsets[_percent_key(pct)] = np.sort(order[:k])
    return subsets


def _percent_key(pct: float) -> str:
    return f"{pct:g}"


def ids_hash(ids: Sequence[str]) -> str:
    """Hash of the sorted ids of a split: what the manifest stores and checks on reload."""
    return sha256_text("\n".join(sorted(str(i) for i in ids)))


def minimum_patients(fractions: Mapping[str, float], limit: int = 1000) -> int:
    """Fewest patients (one image each) for which `split_by_patient` leaves no split empty."""
    for n in range(len(fractions), limit):
        parts = split_by_patient([str(i) for i in range(n)], fractions)
        if all(len(indices) for indices in parts.values()):
            return n
    return limit
