"""Image-report pre-training baselines: losses, the methods registry, models and the training loop.

`get_method` / `register_method` / `method_names` are the registry; `cxrbench.baselines.training.pretrain`
runs a method; docs/adding_a_baseline.md walks through adding one.
"""

from cxrbench.baselines.methods import (
    MethodConfig,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

__all__ = ["MethodConfig", "get_method", "method_names", "register_method", "unregister_method"]
