"""Encoder families behind one feature contract, and loading of any pre-training checkpoint.

features: the stages/strides contract heads rely on; neck: the trainable neck between an encoder's
outputs and those stages (identity for CNNs); registry: architectures by name; families: how each
CNN family is recognised in a checkpoint; resnet, densenet, convnext, swin: the CNN-like families;
vit, pyramid, vit_layouts, hf_folder: the ViT family, its simple feature pyramid, its published key
layouts and Hugging Face folders; checkpoint: safe reading, unwrapping, prefix and depth detection;
imagenet: local ImageNet weights; load: `load_encoder` and its LoadReport; presets: input
preprocessing per encoder; catalogue: known public encoders.
"""

from cxrbench.encoders.checkpoint import (
    WRAPPER_KEYS,
    PrefixChoice,
    choose_prefix,
    detect_arch,
    extract_state_dict,
    read_checkpoint,
)
from cxrbench.encoders.convnext import ConvNeXtConfig, ConvNeXtEncoder, register_convnext_variant
from cxrbench.encoders.densenet import DenseNetConfig, DenseNetEncoder, register_densenet_variant
from cxrbench.encoders.families import Family, family_of, list_families, register_family
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
from cxrbench.encoders.neck import IdentityNeck, build_neck, neck_feature_info
from cxrbench.encoders.registry import create_encoder, list_encoders, register_encoder
from cxrbench.encoders.resnet import ARCHS, DEFAULT_ARCH, ResNetEncoder
from cxrbench.encoders.swin import SwinConfig, SwinEncoder, register_swin_variant
from cxrbench.encoders.vit import ViTConfig, ViTEncoder

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
    "ConvNeXtConfig",
    "ConvNeXtEncoder",
    "DenseNetConfig",
    "DenseNetEncoder",
    "Family",
    "FeatureInfo",
    "IdentityNeck",
    "LoadReport",
    "LoadedEncoder",
    "PrefixChoice",
    "ResNetEncoder",
    "SwinConfig",
    "SwinEncoder",
    "ViTConfig",
    "ViTEncoder",
    "build_neck",
    "choose_prefix",
    "create_encoder",
    "detect_arch",
    "extract_state_dict",
    "family_of",
    "find_imagenet_weights",
    "format_load_report",
    "is_builtin",
    "list_encoders",
    "list_families",
    "load_encoder",
    "neck_feature_info",
    "read_checkpoint",
    "register_convnext_variant",
    "register_densenet_variant",
    "register_encoder",
    "register_family",
    "register_swin_variant",
]
