"""Settings of the image-only pre-training baselines (SimCLR, BYOL, CheXpert-supervised).

A leaf module (no torch): the method registry reads the names and descriptions from here, the
trainer (`image_only.py`) the settings. Values follow the LoVT reference (configs/baseline/*_30.yaml
and the libraries its baselines use); the augmentation is the protocol's pre-training augmentation
for every method (docs/protocol.md), not the reference's own SimCLR transform.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageOnlySpec:
    """One image-only method. batch_size / lr / weight_decay are the reference values (`full`
    profile); smaller profiles cap the batch at their own batch_size * accumulation."""

    name: str
    objective: str  # "simclr" | "byol" | "chexpert"
    description: str
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str  # "warmup_cosine" (1 warm-up epoch, then cosine) | "plateau" (reduce on plateau)
    export: str  # "last" epoch's backbone (SimCLR, BYOL) | "best" validation loss (supervised)
    projection_size: int = 0
    projection_hidden: int = 0  # 0: the backbone's feature size (SimCLR)
    temperature: float = 0.0
    momentum: float = 0.0  # BYOL target EMA decay
    plateau_patience: int = 0
    plateau_factor: float = 0.0
    early_stop_patience: int = 0  # 0: no early stopping


IMAGE_ONLY_SPECS: dict[str, ImageOnlySpec] = {
    spec.name: spec
    for spec in (
        ImageOnlySpec(
            "simclr",
            "simclr",
            "SimCLR: NT-Xent (tau 0.1) between two augmented views, MLP projector to 128-d",
            batch_size=128,
            lr=3e-4,
            weight_decay=1e-4,
            schedule="warmup_cosine",
            export="last",
            projection_size=128,
            temperature=0.1,
        ),
        ImageOnlySpec(
            "byol",
            "byol",
            "BYOL: online predictor regresses a momentum target (decay 0.99), 4096-128 projector",
            batch_size=64,
            lr=3e-5,
            weight_decay=1e-4,
            schedule="warmup_cosine",
            export="last",
            projection_size=128,
            projection_hidden=4096,
            momentum=0.99,
        ),
        ImageOnlySpec(
            "chexpert",
            "chexpert",
            "CheXpert-supervised: multi-label BCE on 5 MIMIC-CXR CheXpert labels (U-Ones, blank = 0)",
            batch_size=64,
            lr=1e-4,
            weight_decay=1e-6,
            schedule="plateau",
            export="best",
            plateau_patience=3,
            plateau_factor=0.5,
            early_stop_patience=10,
        ),
    )
}
