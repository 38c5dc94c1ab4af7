"""Representation analysis: local uniformity/alignment statistics of an encoder, related to its scores.

- `statistics`: uniformity, effective rank, within-image cosine and spatial smoothness of region
  features (the same functions the pre-training losses optimise);
- `records`: `analyze_encoder` (a frozen encoder on a seeded sample of prepared test images) and the
  analysis records it writes;
- `alignment`: image-report alignment of `cxrbench pretrain` runs, the only module that imports
  `cxrbench.baselines`;
- `correlation`: Spearman correlation with permutation p-values between statistics and run-record
  scores across encoders; `plots`: its figures.

Formulas and their meaning for localized tasks: docs/analysis.md.
"""

from cxrbench.analysis.alignment import global_alignment, local_alignment
from cxrbench.analysis.correlation import MEAN_TASK, correlate, load_analyses, spearman_permutation
from cxrbench.analysis.records import (
    ANALYSIS_SCHEMA_VERSION,
    analysis_path,
    analyze_encoder,
    default_name,
    write_analysis,
)
from cxrbench.analysis.statistics import SCALAR_STATISTICS, feature_statistics, region_statistics

__all__ = [
    "ANALYSIS_SCHEMA_VERSION",
    "MEAN_TASK",
    "SCALAR_STATISTICS",
    "analysis_path",
    "analyze_encoder",
    "correlate",
    "default_name",
    "feature_statistics",
    "global_alignment",
    "load_analyses",
    "local_alignment",
    "region_statistics",
    "spearman_permutation",
    "write_analysis",
]
