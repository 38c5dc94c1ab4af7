"""CheXpert labels as binary training targets: the uncertain-label policy of the supervised baseline.

The prepared MIMIC-CXR cache keeps the raw codes of mimic-cxr-2.0.0-chexpert.csv.gz (1, 0, -1,
None = blank). The CheXpert-supervised baseline trains on the five CheXpert competition labels
(as the LoVT reference does) with the U-Ones policy (uncertain -> positive; the reference's
default "U_pos" mapping, and the policy Irvin et al. 2019 found best or on par for these labels) and
blank -> negative (a finding the report does not mention is taken as absent, as in the reference).
An image whose study has no row in the table is left out of the supervised training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrbench.errors import CxrbenchError

COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = {"u_ones": 1.0, "u_zeros": 0.0}
DEFAULT_POLICY = "u_ones"


def binary_targets(
    codes: Mapping[str, int | None] | None,
    labels: Sequence[str] = COMPETITION_LABELS,
    policy: str = DEFAULT_POLICY,
) -> np.ndarray | None:
    """One study's raw codes -> float32 targets over `labels` (None when the study has no labels).

    1 -> 1, 0 -> 0, blank (None) -> 0, uncertain (-1) -> 1 under "u_ones", 0 under "u_zeros".
    """
    if policy not in POLICIES:
        raise CxrbenchError(f"unknown uncertain-label policy {policy!r}; valid: {', '.join(POLICIES)}")
    if codes is None:
        return None
    out = np.zeros(len(labels), dtype=np.float32)
    for i, label in enumerate(labels):
        if label not in codes:
            raise CxrbenchError(f"CheXpert labels lack {label!r} (have {', '.join(codes)})")
        code = codes[label]
        if code == 1:
            out[i] = 1.0
        elif code == -1:
            out[i] = POLICIES[policy]
        elif code not in (0, None):
            raise CxrbenchError(f"CheXpert label {label!r}: code {code!r}, expected 1, 0, -1 or blank")
    return out
