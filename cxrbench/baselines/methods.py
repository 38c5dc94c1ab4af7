"""The registry of pre-training methods: each method is a frozen config saying which losses it combines.

A method is data, not code: `MethodConfig` names the global loss, the local loss part, the
distribution prior and their weights, and `method_loss` turns a model's outputs into the weighted sum.
Adding a baseline is registering a new config (optionally with an `extra_loss` callable), see
docs/adding_a_baseline.md. The registry is filled at import from `BUILTIN_METHODS`; `register_method`
adds to a copy owned by this module, so a test can register a toy method without touching others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cxrbench.baselines.image_only_specs import IMAGE_ONLY_SPECS
from cxrbench.baselines.losses import (
    UNIFORMITY_PRIORS,
    distribution_prior,
    float32_outside_autocast,
    global_infonce,
    local_within_sample_uniformity,
    lovt_local_terms,
)
from cxrbench.baselines.models import POOLINGS, PROJECTIONS
from cxrbench.encoders import BUILTIN_ENCODERS
from cxrbench.errors import CxrbenchError

if TYPE_CHECKING:
    from cxrbench.baselines.models import PretrainOutputs

LOCAL_PARTS = ("full", "alignment", "uniformity")
SENTENCE_SAMPLING = ("all", "one")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "cosine_per_epoch", "plateau")
INIT_METHODS = BUILTIN_ENCODERS  # methods that only export an initial encoder


@dataclass(frozen=True)
class MethodConfig:
    """One pre-training method: its architecture choices, losses and (optionally) optimisation.

    kind "init" exports an encoder without training (random / ImageNet init); kind "pretrain" trains
    image + report encoders with: global_weight * global InfoNCE (tau, weight_i2r) + local_weight *
    the local part `local_part` + prior_weight * (prior(image regions) + prior(sentences)) for the
    distribution prior `prior` (None = none; kwargs in `prior_kwargs`) + extra_weight *
    extra_loss(outputs) when given. local_part: "full" = LoVT's four local terms, "alignment" = only
    their alignment parts, "uniformity" = within-sample uniformity of each modality without any
    cross-modal term (2 * local_weight per modality: it stands for both directions), None = none.
    lr / max_epochs / patience / accumulation: None = the profile's; a profile with
    method_budget=False (demo, tests) keeps its own short budget whatever the method says.
    docs/baselines.md lists every built-in method's values beside the reference's.
    """

    name: str
    kind: str = "pretrain"
    description: str = ""
    pooling: str = "attention"  # global pooling of regions (and sentences): "attention" (8 heads), "avg"
    report_pooling: str | None = None  # None = `pooling`; "max" = max over every token of the report
    projection: str = "mlp"  # "mlp" (2 layers + BatchNorm), "mlp_nonorm" (ConVIRT) or "linear"
    report_sentences: str = "all"  # training: "all" sentences, order shuffled, or "one" random sentence
    global_weight: float = 1.0
    global_tau: float = 0.1
    weight_i2r: float = 0.75
    learnable_tau: bool = False  # learnable temperature, initialised at global_tau
    local_part: str | None = None  # one of LOCAL_PARTS or None
    local_weight: float = 0.375
    local_tau: float = 0.3
    prior: str | None = None  # a key of UNIFORMITY_PRIORS
    prior_weight: float = 1.0
    prior_kwargs: tuple[tuple[str, float], ...] = ()
    prior_dim_scaled: bool = False  # multiply the prior by d_z (sliced Wasserstein scales like 1/D)
    extra_loss: Callable[[PretrainOutputs], Tensor] | None = field(default=None, compare=False)
    extra_weight: float = 1.0
    optimizer: str = "adamw"  # "adamw" or "adam" (weight decay as an L2 term, ConVIRT)
    schedule: str = "cosine_per_epoch"  # or "cosine" (one cosine over the run), "plateau"
    lr: float | None = None
    max_epochs: int | None = None
    patience: int | None = None  # early stopping on the validation loss
    accumulation: int | None = None  # gradient accumulation steps
    plateau_patience: int = 12  # schedule "plateau": ReduceLROnPlateau on the validation loss
    plateau_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("init", "pretrain", "image_only"):
            raise CxrbenchError(
                f"method {self.name!r}: kind must be 'init', 'pretrain' or 'image_only', not {self.kind!r}"
            )
        if self.kind == "image_only" and self.name not in IMAGE_ONLY_SPECS:
            raise CxrbenchError(f"method {self.name!r}: image-only methods are {', '.join(IMAGE_ONLY_SPECS)}")
        if self.kind == "init" and self.name not in INIT_METHODS:
            raise CxrbenchError(f"method {self.name!r}: init methods are {', '.join(INIT_METHODS)}")
        choices = {
            "pooling": (self.pooling, ("attention", "avg")),
            "report_pooling": (self.report_pooling or self.pooling, POOLINGS),
            "projection": (self.projection, PROJECTIONS),
            "report_sentences": (self.report_sentences, SENTENCE_SAMPLING),
            "optimizer": (self.optimizer, OPTIMIZERS),
            "schedule": (self.schedule, SCHEDULES),
            "local_part": (self.local_part or "full", LOCAL_PARTS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise CxrbenchError(
                    f"method {self.name!r}: {name} must be one of {', '.join(allowed)}, not {value!r}"
                )
        if self.prior is not None and self.prior not in UNIFORMITY_PRIORS:
            known = ", ".join(sorted(UNIFORMITY_PRIORS))
            raise CxrbenchError(f"method {self.name!r}: unknown prior {self.prior!r}; available: {known}")

    @property
    def trains(self) -> bool:
        return self.kind == "pretrain"

    @property
    def needs_cross_attention(self) -> bool:
        """Only LoVT's cross-modal terms use attended representations (the uniformity part does not)."""
        return self.local_part in ("full", "alignment")

    @property
    def image_pooling(self) -> str:
        return self.pooling

    @property
    def sentence_pooling(self) -> str:
        return self.report_pooling or self.pooling

    @property
    def needs_local_projections(self) -> bool:
        """Local (region / sentence) projections exist only where a loss term uses them."""
        return self.local_part is not None or self.prior is not None or self.extra_loss is not None

    def as_record(self) -> dict:
        """JSON/checkpoint-safe description (the extra loss is recorded by name only)."""
        record = asdict(self)
        record["extra_loss"] = (
            None if self.extra_loss is None else getattr(self.extra_loss, "__name__", "custom")
        )
        record["prior_kwargs"] = dict(self.prior_kwargs)
        return record


# The reference's ConVIRT (configs/experiment/ConVIRT_30.yaml): image avg pool, report max over tokens,
# projections without BatchNorm, one random sentence, Adam 1e-5, reduce-on-plateau, 500 epochs.
_CONVIRT = {
    "pooling": "avg",
    "report_pooling": "max",
    "projection": "mlp_nonorm",
    "report_sentences": "one",
    "optimizer": "adam",
    "schedule": "plateau",
    "lr": 1e-5,
    "max_epochs": 500,
    "patience": 15,
    "accumulation": 1,
}
# The reference's CLIP* (configs/experiment/CLIP_30.yaml): attention-pooled image, report max over
# tokens, BatchNorm MLPs, fixed temperature 0.1, 0.75/0.25, one random sentence, LoVT's schedule.
_CLIP = {"pooling": "attention", "report_pooling": "max", "report_sentences": "one"}
_GAUSSIAN = {"prior": "gaussian_potential", "prior_kwargs": (("t", 2.0),)}
# The uniformity-prior method and its control keep this project's former schedule, one cosine over
# the run (the one its demo results were established with); LoVT's is the per-epoch cosine.
_PRIOR_SCHEDULE = {"schedule": "cosine"}

BUILTIN_METHODS: tuple[MethodConfig, ...] = (
    MethodConfig("random", kind="init", description="random initialisation (torchvision init), no training"),
    MethodConfig("imagenet", kind="init", description="ImageNet initialisation (local torchvision weights)"),
    MethodConfig(
        "convirt",
        **_CONVIRT,
        description="ConVIRT as the reference runs it: global InfoNCE (0.75/0.25, tau 0.1), avg-pooled "
        "image, max over the report's tokens, MLPs without BatchNorm, one random sentence, Adam 1e-5, "
        "reduce-on-plateau",
    ),
    MethodConfig(
        "clip",
        **_CLIP,
        description="CLIP* as the reference runs it: global InfoNCE (0.75/0.25, fixed tau 0.1), "
        "attention-pooled image, max over the report's tokens, BatchNorm MLPs, one random sentence",
    ),
    MethodConfig(
        "global_avg",
        pooling="avg",
        schedule="cosine",
        description="global InfoNCE (0.75/0.25, tau 0.1), average pooling of regions and sentences, "
        "LoVT's projections and schedule (this project's former 'convirt')",
    ),
    MethodConfig(
        "clip_learned_tau",
        pooling="avg",
        projection="linear",
        weight_i2r=0.5,
        global_tau=0.07,
        learnable_tau=True,
        schedule="cosine",
        description="OpenAI-CLIP-style: symmetric InfoNCE, linear projections, learnable temperature "
        "(init 0.07), average pooling (this project's former 'clip')",
    ),
    MethodConfig(
        "lovt",
        local_part="full",
        description="LoVT: global InfoNCE + local intra-sample contrastive loss (4 terms x 0.375, tau "
        "0.3) through the learned cross-modal attention",
    ),
    MethodConfig(
        "global_attention",
        **_PRIOR_SCHEDULE,
        description="control: global InfoNCE only, with every other setting of uniformity_prior "
        "(the reference's 'no local loss' ablation); what the prior adds is uniformity_prior minus this",
    ),
    MethodConfig(
        "uniformity_prior",
        **_GAUSSIAN,
        **_PRIOR_SCHEDULE,
        description="global InfoNCE + within-sample Gaussian-potential uniformity prior, no local alignment",
    ),
    MethodConfig(
        "uniformity_prior_sw",
        prior="sliced_wasserstein",
        **_PRIOR_SCHEDULE,
        prior_dim_scaled=True,
        description="global InfoNCE + sliced-Wasserstein prior towards the uniform law on the sphere",
    ),
    MethodConfig(
        "uniformity_prior_mm",
        prior="moment_matching",
        **_PRIOR_SCHEDULE,
        description="global InfoNCE + moment-matching prior (mean 0, covariance I/D) within each sample",
    ),
    MethodConfig(
        "lovt_no_alignment",
        local_part="uniformity",
        description="ablation: LoVT without local alignment: the within-sample uniformity its negatives "
        "enforce (tau 0.3, same weights), no cross-modal local term",
    ),
    MethodConfig(
        "lovt_no_uniformity",
        local_part="alignment",
        description="ablation: LoVT with only the local alignment parts (no intra-sample negatives; a "
        "collapse minimises them)",
    ),
    MethodConfig(
        "lovt_alignment_prior",
        local_part="alignment",
        **_GAUSSIAN,
        description="ablation: local alignment kept, intra-sample negatives replaced by the uniformity prior",
    ),
)


# Image-only baselines (no report): trained by cxrbench.baselines.image_only, settings in image_only_specs.
IMAGE_ONLY_METHODS: tuple[MethodConfig, ...] = tuple(
    MethodConfig(s.name, kind="image_only", description=s.description) for s in IMAGE_ONLY_SPECS.values()
)


def _builtin_registry() -> dict[str, MethodConfig]:
    return {m.name: m for m in (*BUILTIN_METHODS, *IMAGE_ONLY_METHODS)}


_REGISTRY: dict[str, MethodConfig] = _builtin_registry()


def register_method(name: str, config: MethodConfig, *, replace: bool = False) -> MethodConfig:
    """Make `config` available as `name` to `get_method`, `pretrain` and `cxrbench pretrain`."""
    if name != config.name:
        raise CxrbenchError(f"register_method: name {name!r} differs from config.name {config.name!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not config:
        raise CxrbenchError(f"method {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = config
    return config


def unregister_method(name: str) -> None:
    """Remove a registered method (built-ins come back with their original config)."""
    _REGISTRY.pop(name, None)
    builtin = _builtin_registry().get(name)
    if builtin is not None:
        _REGISTRY[name] = builtin


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> MethodConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CxrbenchError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}") from None


def _prior(config: MethodConfig, z: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
    kwargs: dict[str, object] = dict(config.prior_kwargs)
    if "generator" in inspect.signature(UNIFORMITY_PRIORS[config.prior]).parameters:
        kwargs["generator"] = generator
    value = distribution_prior(config.prior, z, mask=mask, **kwargs)
    return value * z.shape[-1] if config.prior_dim_scaled else value


def method_loss(
    config: MethodConfig, out: PretrainOutputs, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """The method's total loss ("loss") and its weighted components (for logging).

    Computed in float32 outside any autocast region, whatever precision the encoders ran in.
    `generator` makes stochastic priors (sliced Wasserstein) deterministic, e.g. for validation.
    """
    with float32_outside_autocast():
        return _method_loss(config, _float32_outputs(out), generator)


def _float32_outputs(out: PretrainOutputs) -> PretrainOutputs:
    values = {}
    for f in fields(out):
        value = getattr(out, f.name)
        if isinstance(value, Tensor) and value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        values[f.name] = value
    return replace(out, **values)


def _method_loss(
    config: MethodConfig, out: PretrainOutputs, generator: torch.Generator | None
) -> dict[str, Tensor]:
    parts: dict[str, Tensor] = {}
    if config.global_weight:
        tau = out.global_tau if out.global_tau is not None else config.global_tau
        parts["global"] = config.global_weight * global_infonce(
            out.image_global, out.report_global, tau=tau, weight_i2r=config.weight_i2r
        )
    if config.local_part == "uniformity":
        if out.image_local is None or out.sentence_local is None:
            raise CxrbenchError(f"method {config.name!r} needs local projections")
        uniformity = local_within_sample_uniformity(
            out.image_local, out.image_pool_weights, None, config.local_tau
        ) + local_within_sample_uniformity(
            out.sentence_local, out.sentence_pool_weights, out.sentence_mask, config.local_tau
        )
        parts["local"] = 2.0 * config.local_weight * uniformity
    elif config.local_part is not None:
        if out.image_attended is None or out.sentence_attended is None:
            raise CxrbenchError(f"method {config.name!r} needs cross-modal attention outputs")
        terms = lovt_local_terms(
            out.image_local,
            out.image_attended,
            out.sentence_local,
            out.sentence_attended,
            out.sentence_mask,
            out.image_pool_weights,
            out.sentence_pool_weights,
            grid=out.grid,
            tau=config.local_tau,
            part=config.local_part,
        )
        parts["local"] = config.local_weight * torch.stack(list(terms.values())).sum()
    if config.prior is not None:
        parts["prior"] = config.prior_weight * (
            _prior(config, out.image_local, None, generator)
            + _prior(config, out.sentence_local, out.sentence_mask, generator)
        )
    if config.extra_loss is not None:
        parts["extra"] = config.extra_weight * config.extra_loss(out)
    if not parts:
        raise CxrbenchError(f"method {config.name!r} has no loss term")
    parts = {k: v.float() for k, v in parts.items()}
    return {"loss": torch.stack(list(parts.values())).sum(), **parts}
