"""Every setting of a pre-training method in words, the values docs/baselines.md tabulates.

One function of a `MethodConfig` and the profile it trains with (the full profile by default), so the
documentation table can be checked against the code (tests/test_baselines.py) instead of drifting.
"""

from __future__ import annotations

from cxrbench.baselines.methods import MethodConfig
from cxrbench.baselines.training import PretrainProfile, get_pretrain_profile, method_profile

SETTINGS = (
    "image pooling",
    "report global",
    "projections",
    "report in training",
    "global loss",
    "local loss",
    "cross-attention",
    "prior",
    "optimiser",
    "schedule",
    "epochs / patience",
    "batch",
)

_POOLING = {"attention": "attention (8 heads)", "avg": "average", "max": "max over tokens"}
_REPORT_POOLING = {
    "attention": "attention over sentences",
    "avg": "average of sentences",
    "max": "max over tokens",
}
_PROJECTION = {"mlp": "MLP + BatchNorm", "mlp_nonorm": "MLP, no norm", "linear": "linear"}
_OPTIMIZER = {"adamw": "AdamW", "adam": "Adam"}
_SCHEDULE = {"cosine": "cosine over the run", "cosine_per_epoch": "cosine per epoch"}


def _number(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-") if 0 < x < 1e-3 else f"{x:g}"


def method_settings(config: MethodConfig, profile: PretrainProfile | None = None) -> dict[str, str]:
    """The method's value of every entry of SETTINGS, as the words the documentation uses."""
    if not config.trains:
        return dict.fromkeys(SETTINGS, "-")
    prof = method_profile(config, profile or get_pretrain_profile("full"))
    tau = f"tau {config.global_tau:g}" + (" learnable" if config.learnable_tau else "")
    i2r = f"{config.weight_i2r:g}/{1 - config.weight_i2r:g}"
    local = {
        None: "none",
        "full": f"LoVT 4 x {config.local_weight:g}, tau {config.local_tau:g}",
        "alignment": f"alignment parts 4 x {config.local_weight:g}, tau {config.local_tau:g}",
        "uniformity": f"within-sample uniformity 2 x {config.local_weight:g}, tau {config.local_tau:g}",
    }[config.local_part]
    if config.prior is None:
        prior = "none"
    else:
        kwargs = ", ".join(f"{k} {v:g}" for k, v in config.prior_kwargs)
        prior = config.prior.replace("_", " ") + (f" ({kwargs})" if kwargs else "")
        prior += f" x {config.prior_weight:g}" + (" x d_z" if config.prior_dim_scaled else "")
    schedule = _SCHEDULE.get(config.schedule) or (
        f"plateau ({config.plateau_patience}, x{config.plateau_factor:g})"
    )
    sentences = "one random sentence" if config.report_sentences == "one" else "all, shuffled"
    return {
        "image pooling": _POOLING[config.image_pooling],
        "report global": _REPORT_POOLING[config.sentence_pooling],
        "projections": f"{_PROJECTION[config.projection]} {prof.d_hidden}/{prof.d_z}",
        "report in training": sentences,
        "global loss": f"InfoNCE {tau}, {i2r}",
        "local loss": local,
        "cross-attention": "learned (K, V, O, BatchNorm)" if config.needs_cross_attention else "none",
        "prior": prior,
        "optimiser": f"{_OPTIMIZER[config.optimizer]} {_number(prof.lr)}, wd {_number(prof.weight_decay)}",
        "schedule": schedule,
        "epochs / patience": f"{prof.max_epochs} / {prof.patience}",
        "batch": f"{prof.batch_size} x {prof.accumulation}",
    }
