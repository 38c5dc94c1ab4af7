"""Encoder families behind one feature contract, and loading of any pre-training checkpoint.

features: the stages/strides contract heads rely on; neck: the trainable neck between an encoder's
outputs and those stages (identity for ResNets); registry: architectures by name; resnet: the ResNet
family; vit, pyramid, vit_layouts, hf_folder: the ViT family, its simple feature pyramid, its
published key layouts and Hugging Face folders; checkpoint: safe reading, unwrapping, prefix and
depth detection; imagenet: local ImageNet weights; load: `load_encoder` and its LoadReport.
"""

from cxrbench.encoders.checkpoint import (
    WRAPPER_KEYS,
    PrefixChoice,
    choose_prefix,
    detect_arch,
    extract_state_dict,
    read_checkpoint,
)
from cxrbench.encoders.features import STAGES, STRIDES, FeatureInfo
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
from cxrbench.encoders.neck import IdentityNeck, build_neck, neck_feature_info
from cxrbench.encoders.registry import create_encoder, list_encoders, register_encoder
from cxrbench.encoders.resnet import ARCHS, DEFAULT_ARCH, ResNetEncoder
from cxrbench.encoders.vit import ViTConfig, ViTEncoder

__all__ = [
    "ARCHS",
    "BUILTIN_ENCODERS",
    "DEFAULT_ARCH",
    "IMAGENET_ENV",
    "IMAGENET_WEIGHTS_NAME",
    "MIN_FRACTION",
    "RANDOM_INIT_SEED",
    "STAGES",
    "STRIDES",
    "WRAPPER_KEYS",
    "FeatureInfo",
    "IdentityNeck",
    "LoadReport",
    "LoadedEncoder",
    "PrefixChoice",
    "ResNetEncoder",
    "ViTConfig",
    "ViTEncoder",
    "build_neck",
    "choose_prefix",
    "create_encoder",
    "detect_arch",
    "extract_state_dict",
    "find_imagenet_weights",
    "format_load_report",
    "is_builtin",
    "list_encoders",
    "load_encoder",
    "neck_feature_info",
    "read_checkpoint",
    "register_encoder",
]
