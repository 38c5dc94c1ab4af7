"""Encoder families behind one feature contract, and loading of any pre-training checkpoint.

features: the stages/strides contract heads rely on; registry: architectures by name; resnet: the
ResNet family; checkpoint: safe reading, unwrapping, prefix and depth detection; imagenet: local
ImageNet weights; load: `load_encoder` and its LoadReport.
"""

from cxrbench.encoders.checkpoint import (
    WRAPPER_KEYS,
    PrefixChoice,
    choose_prefix,
    detect_arch,
    extract_state_dict,
    read_checkpoint,
)
from cxrbench.encoders.features import INPUT, INPUT_CHANNELS, STAGES, STRIDES, FeatureInfo
from cxrbench.encoders.imagenet import IMAGENET_ENV, IMAGENET_WEIGHTS_NAME, find_imagenet_weights
from cxrbench.encoders.load import (
    BUILTIN_ENCODERS,
    MIN_FRACTION,
    RANDOM_INIT_SEED,
    LoadedEncoder,
    LoadReport,
    format_load_report,
    is_builtin,
    load_encoder,
)
from cxrbench.encoders.registry import create_encoder, list_encoders, register_encoder
from cxrbench.encoders.resnet import ARCHS, DEFAULT_ARCH, ResNetEncoder

__all__ = [
    "ARCHS",
    "BUILTIN_ENCODERS",
    "DEFAULT_ARCH",
    "IMAGENET_ENV",
    "IMAGENET_WEIGHTS_NAME",
    "INPUT",
    "INPUT_CHANNELS",
    "MIN_FRACTION",
    "RANDOM_INIT_SEED",
    "STAGES",
    "STRIDES",
    "WRAPPER_KEYS",
    "FeatureInfo",
    "LoadReport",
    "LoadedEncoder",
    "PrefixChoice",
    "ResNetEncoder",
    "choose_prefix",
    "create_encoder",
    "detect_arch",
    "extract_state_dict",
    "find_imagenet_weights",
    "format_load_report",
    "is_builtin",
    "list_encoders",
    "load_encoder",
    "read_checkpoint",
    "register_encoder",
]
