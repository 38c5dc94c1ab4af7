"""Encoder families behind one feature contract, and checkpoint loading."""

from cxrbench.encoders.loading import *  # noqa: F403
from cxrbench.encoders.loading import (  # noqa: F401
    ARCHS,
    IMAGENET_ENV,
    MIN_FRACTION,
    NAMES,
    STAGES,
    STRIDES,
    FeatureInfo,
    LoadedEncoder,
    LoadReport,
    ResNetEncoder,
    detect_arch,
    extract_state_dict,
    find_imagenet_weights,
    format_load_report,
    load_encoder,
    read_checkpoint,
)
