"""Public chest X-ray encoders people want scored: what they are, how they are published, where to get
them. Nothing here downloads anything; `cxrbench encoders` prints it so a user knows which file to
fetch and which flags (if any) `cxrbench evaluate` needs for it.

Licences are given where the publisher states one plainly; otherwise "see source" (check before use).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KnownEncoder:
    name: str
    architecture: str
    family: str  # the cxrbench family that loads it (see `cxrbench encoders`)
    published_as: str
    preset: str  # what `evaluate` uses: auto-detected, or the --preset to pass
    licence: str
    source: str
    notes: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


KNOWN_ENCODERS: tuple[KnownEncoder, ...] = (
    KnownEncoder(
        "RAD-DINO",
        "ViT-B/14 (DINOv2), trained at 518 px",
        "vit",
        "Hugging Face Dinov2Model folder (config.json + model.safetensors)",
        "auto (preprocessor_config.json in the folder)",
        "MSRLA (Microsoft Research Licence Agreement)",
        "https://huggingface.co/microsoft/rad-dino",
        "evaluate the downloaded folder itself: cxrbench evaluate rad-dino/",
    ),
    KnownEncoder(
        "BiomedCLIP",
        "ViT-B/16, 224 px",
        "vit",
        "open_clip checkpoint; the vision tower is a timm ViT under visual.trunk.",
        "--preset clip",
        "MIT",
        "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    ),
    KnownEncoder(
        "CheXzero",
        "OpenAI CLIP ViT-B/32, 224 px",
        "vit",
        "CLIP state dict (visual.conv1, visual.transformer.resblocks.N, visual.positional_embedding)",
        "--preset clip",
        "see source",
        "https://github.com/rajpurkarlab/CheXzero",
        "weights linked from the repository's README",
    ),
    KnownEncoder(
        "MGCA (ViT-B/16)",
        "ViT-B/16 (timm-style)",
        "vit",
        "Lightning .ckpt",
        "--preset imagenet",
        "see source",
        "https://github.com/HKU-MedAI/MGCA",
    ),
    KnownEncoder(
        "MRM",
        "ViT-B/16 (timm-style)",
        "vit",
        ".pth state dict",
        "--preset imagenet",
        "see source",
        "https://github.com/RL4M/MRM-pytorch",
    ),
    KnownEncoder(
        "EVA-X",
        "ViT (timm-style; EVA-02 blocks)",
        "vit",
        ".pth state dict",
        "--preset imagenet",
        "see source",
        "https://github.com/hustvl/EVA-X",
    ),
    KnownEncoder(
        "MedCLIP (Swin)",
        "Swin-T (patch 4, window 7, 224 px)",
        "swin",
        "Hugging Face SwinModel state dict under vision_model.model. (pytorch_model.bin)",
        "--preset medclip",
        "see source",
        "https://github.com/RyanWangZf/MedCLIP",
        "the ResNet-50 variant loads as a ResNet (vision_model.model.)",
    ),
    KnownEncoder(
        "torchxrayvision DenseNet-121",
        "DenseNet-121, 1-channel input scaled to [-1024, 1024]",
        "densenet",
        "whole-model pickle: convert once to a state dict (cxrbench prints the one-line command)",
        "auto (the 1-channel stem: xrv)",
        "Apache-2.0",
        "https://github.com/mlmed/torchxrayvision",
        "e.g. the densenet121-res224-all weights",
    ),
    KnownEncoder(
        "BioViL",
        "ResNet-50",
        "resnet",
        "state dict (biovil_image_resnet50_proj_size_128.pt)",
        "auto (dataset)",
        "MIT",
        "https://huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized",
    ),
    KnownEncoder(
        "GLoRIA",
        "ResNet-50",
        "resnet",
        "Lightning .ckpt",
        "auto (dataset)",
        "see source",
        "https://github.com/marshuang80/gloria",
    ),
    KnownEncoder(
        "ConVIRT",
        "ResNet-50",
        "resnet",
        "state dict or Lightning .ckpt (e.g. as trained by `cxrbench pretrain convirt`)",
        "auto (dataset)",
        "see source",
        "https://github.com/philip-mueller/lovt",
    ),
    KnownEncoder(
        "MGCA (ResNet-50)",
        "ResNet-50",
        "resnet",
        "Lightning .ckpt",
        "auto (dataset)",
        "see source",
        "https://github.com/HKU-MedAI/MGCA",
    ),
)
