"""Dataset adapters (one module per dataset) and the prepared-cache API.

`get_adapter(name)` returns an adapter instance; `open_prepared(path)` opens a prepared cache.
Adapters are imported lazily so that importing cxrbench stays cheap.
"""

from __future__ import annotations

import importlib

from cxrbench.datasets.base import DatasetAdapter
from cxrbench.datasets.prepared import PreparedDataset, PreparedSplit, Sample, open_prepared
from cxrbench.errors import CxrbenchError

ADAPTERS: dict[str, str] = {
    "rsna": "cxrbench.datasets.rsna:RSNAAdapter",
    "siim": "cxrbench.datasets.siim:SIIMAdapter",
    "object_cxr": "cxrbench.datasets.object_cxr:ObjectCXRAdapter",
    "nih": "cxrbench.datasets.nih:NIHAdapter",
    "covid_rural": "cxrbench.datasets.covid_rural:CovidRuralAdapter",
    "mimic_cxr": "cxrbench.datasets.mimic_cxr:MimicCXRAdapter",
}

DATASET_NAMES: tuple[str, ...] = tuple(ADAPTERS)


def get_adapter(name: str) -> DatasetAdapter:
    """Instantiate the adapter registered under `name` (a helpful error lists valid names)."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise CxrbenchError(f"unknown dataset {name!r}; valid names: {', '.join(ADAPTERS)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = [
    "ADAPTERS",
    "DATASET_NAMES",
    "DatasetAdapter",
    "PreparedDataset",
    "PreparedSplit",
    "Sample",
    "get_adapter",
    "open_prepared",
]
