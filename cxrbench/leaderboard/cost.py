"""The cost of each encoder, from its run records: parameters, peak memory and training throughput.

One row per encoder (final runs with status ok): encoder parameters, trainable head parameters per
head, the largest peak memory of any run (and how it was measured), and the median training images/s
of its frozen and of its fine-tune runs. Frozen runs with the feature cache train the head alone, so
their throughput is the head's; fine-tune runs pass every image through the encoder. Records written
before these fields existed show "-".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from statistics import median

import pandas as pd

from cxrbench.protocol.record_schema import FINAL, is_ok

COST_COLUMNS = (
    "encoder",
    "encoder_parameters",
    "head_parameters",
    "peak_memory_gib",
    "peak_memory_source",
    "train_images_per_s_frozen",
    "train_images_per_s_finetune",
    "runs",
)


def cost_table(records: Iterable[Mapping]) -> pd.DataFrame:
    """One row per encoder (see the module docstring); columns COST_COLUMNS."""
    groups: dict[str, list[Mapping]] = {}
    for record in records:
        if is_ok(record) and record.get("phase") == FINAL:
            groups.setdefault(str(record["encoder"]), []).append(record)
    rows = []
    for encoder, runs in sorted(groups.items()):
        params = [r["encoder_parameters"] for r in runs if r.get("encoder_parameters") is not None]
        heads: dict[str, int] = {}
        for r in runs:
            head = (r.get("task_settings") or {}).get("head")
            if head and r.get("head_parameters") is not None:
                heads[head] = max(heads.get(head, 0), int(r["head_parameters"]))
        peaks = [
            (r["peak_memory_bytes"], r.get("peak_memory_source")) for r in runs if r.get("peak_memory_bytes")
        ]
        peak = max(peaks) if peaks else (None, None)
        speed = {"frozen": [], "finetune": []}
        for r in runs:
            mode = (r.get("task_settings") or {}).get("mode")
            if mode in speed and r.get("train_images_per_s"):
                speed[mode].append(float(r["train_images_per_s"]))
        rows.append(
            {
                "encoder": encoder,
                "encoder_parameters": max(params) if params else None,
                "head_parameters": ", ".join(f"{h} {n}" for h, n in sorted(heads.items())) or None,
                "peak_memory_gib": peak[0] / 1024**3 if peak[0] else None,
                "peak_memory_source": peak[1],
                "train_images_per_s_frozen": median(speed["frozen"]) if speed["frozen"] else None,
                "train_images_per_s_finetune": median(speed["finetune"]) if speed["finetune"] else None,
                "runs": len(runs),
            }
        )
    return pd.DataFrame(rows, columns=list(COST_COLUMNS))


def render_cost_markdown(table: pd.DataFrame) -> str:
    """The cost table as Markdown (millions of parameters, GiB, images/s; "-" where unknown)."""
    lines = [
        "| encoder | encoder params (M) | head params (M) | peak memory (GiB) "
        "| train img/s frozen | train img/s fine-tune |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        heads = "-"
        if _known(row["head_parameters"]):
            pairs = (part.split() for part in str(row["head_parameters"]).split(", "))
            heads = ", ".join(f"{head} {int(n) / 1e6:.2f}" for head, n in pairs)
        peak = _fmt(row["peak_memory_gib"], ".2f")
        if peak != "-" and _known(row["peak_memory_source"]):
            peak += f" ({row['peak_memory_source']})"
        params = "-" if not _known(row["encoder_parameters"]) else f"{row['encoder_parameters'] / 1e6:.1f}"
        frozen = _fmt(row["train_images_per_s_frozen"], ".1f")
        finetune = _fmt(row["train_images_per_s_finetune"], ".1f")
        lines.append(f"| {row['encoder']} | {params} | {heads} | {peak} | {frozen} | {finetune} |")
    return "\n".join(lines) + "\n"


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _fmt(value: object, spec: str) -> str:
    return format(value, spec) if _known(value) else "-"
