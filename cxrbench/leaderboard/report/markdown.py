"""README-ready Markdown: one table, tasks as columns grouped by dataset, then the footer rules."""

from __future__ import annotations

from cxrbench.leaderboard.report.layout import DATASET_NAMES, METRIC_NAMES, Layout

SHORT_DATASET = {
    "RSNA Pneumonia": "RSNA",
    "COVID Rural": "COVID",
    "SIIM-ACR Pneumothorax": "SIIM",
    "NIH ChestX-ray8": "NIH",
}


def _escape(text: str) -> str:
    """Keep cell text literal; intra-word underscores (task ids) are not emphasis in GFM, so they stay."""
    return text.replace("|", "\\|").replace("*", "\\*")


def header_label(dataset: str, label: str, metric: str) -> str:
    name = DATASET_NAMES.get(dataset, dataset)
    return f"{SHORT_DATASET.get(name, name)} {label} ({METRIC_NAMES.get(metric, metric)})"


def render_markdown(layout: Layout, title: str = "cxrbench leaderboard") -> str:
    head = ["Encoder"] + [_escape(header_label(c.dataset, c.label, c.metric)) for c in layout.columns]
    head += ["Mean rank", "Wins"]
    lines = [
        f"## {title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for row in layout.rows:
        label = _escape(row.label)
        cells = [label if row.source == "measured" else f"*{label}*"]
        for col in layout.columns:
            cell = row.cells.get(col.task_id)
            text = cell.text if cell is not None else "–"
            cells.append(f"**{text}**" if cell is not None and cell.bold else text)
        cells.append(row.rank_text(len(layout.columns)))
        cells.append(row.wins)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {_escape(line)}" for line in layout.footer]
    return "\n".join(lines) + "\n"
