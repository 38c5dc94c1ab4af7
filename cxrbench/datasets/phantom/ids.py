"""Real image ids for phantom data: a seeded sample of each reference split list, in proportion.

A phantom carries real ids (with synthetic pixels) so that `cxrbench prepare` runs its default path,
the reference split lists, on it; the prepared phantom is then recorded as a subset of the lists.
"""

from __future__ import annotations

import zlib

import numpy as np

from cxrbench.datasets.reference_splits import reference_split_ids


def allocate(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split `n` draws over the lists in proportion to their sizes (largest remainders), giving each
    list at least one draw when `n` allows, and never more than a list holds."""
    names = list(sizes)
    total = sum(sizes.values())
    n = min(n, total)
    exact = {k: n * sizes[k] / total for k in names}
    counts = {k: int(exact[k]) for k in names}
    for k in sorted(names, key=lambda k: exact[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    if n >= len(names):
        for k in names:
            while counts[k] == 0:
                donor = max(names, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] += 1
    return {k: min(counts[k], sizes[k]) for k in names}


def sample_reference_ids(dataset: str, n: int, seed: int) -> dict[str, list[str]]:
    """A seeded sample of `n` ids (at most all) from the reference lists, per split, in list order."""
    lists = reference_split_ids(dataset)
    counts = allocate(n, {split: len(ids) for split, ids in lists.items()})
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode("utf-8"))])
    return {
        split: [ids[i] for i in np.sort(rng.choice(len(ids), size=counts[split], replace=False))]
        for split, ids in lists.items()
    }


def shuffled_ids(rng: np.random.Generator, per_split: dict[str, list[str]]) -> list[str]:
    """All sampled ids in one seeded order (so that a phantom's special images fall in any split)."""
    ids = [i for split_ids in per_split.values() for i in split_ids]
    return [ids[k] for k in rng.permutation(len(ids))]
