"""One self-contained HTML page: sortable table, footer rules, plots inlined as data URIs (no URLs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from cxrbench.leaderboard.report.layout import METRIC_NAMES, Layout

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 0.25em 0.5em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
th.sortable { cursor: pointer; }
th.sortable:hover { background: #e0e0e0; }
td.encoder, th.encoder { text-align: left; }
tr.published td { color: #666; font-style: italic; }
td.best { font-weight: bold; }
ul.footer { font-size: 0.8em; max-width: 70em; }
img { max-width: 100%; margin: 1em 0; }
"""

# Click a task header to sort by its mean (click again to reverse); undefined values sort last.
_JS = """
document.querySelectorAll('th.sortable').forEach(function (th) {
  th.addEventListener('click', function () {
    var col = Number(th.dataset.col), body = document.querySelector('#leaderboard tbody');
    var asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = parseFloat(a.cells[col].dataset.sort), y = parseFloat(b.cells[col].dataset.sort);
      if (isNaN(x)) return 1; if (isNaN(y)) return -1;
      return asc ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _num(value: float) -> str:
    return repr(float(value)) if np.isfinite(value) else "NaN"


def render_html(
    layout: Layout, images: dict[str, Path] | None = None, title: str = "cxrbench leaderboard"
) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<table id="leaderboard"><thead>',
        '<tr><th class="encoder"></th>',
    ]
    out += [f'<th colspan="{len(cols)}">{esc(name)}</th>' for name, cols in layout.groups()]
    out.append("<th></th><th></th></tr>")
    out.append('<tr><th class="encoder sortable" data-col="0">Encoder</th>')
    for i, col in enumerate(layout.columns, start=1):
        label = f"{col.label} ({METRIC_NAMES.get(col.metric, col.metric)})"
        out.append(f'<th class="sortable" data-col="{i}" title="{esc(col.task_id)}">{esc(label)}</th>')
    n = len(layout.columns)
    out.append(
        f'<th class="sortable" data-col="{n + 1}">Mean rank</th><th class="sortable" data-col="{n + 2}">Wins</th>'
    )
    out.append("</tr></thead><tbody>")
    for idx, row in enumerate(layout.rows):
        out.append(f'<tr class="{row.source}"><td class="encoder" data-sort="{idx}">{esc(row.label)}</td>')
        for col in layout.columns:
            cell = row.cells.get(col.task_id)
            if cell is None:
                out.append('<td data-sort="NaN">–</td>')
                continue
            cls = ' class="best"' if cell.bold else ""
            out.append(
                f'<td{cls} data-sort="{_num(cell.mean)}" title="{esc(cell.detail)}">{esc(cell.text)}</td>'
            )
        wins = row.wins.split("/")[0] if row.wins[:1].isdigit() else "NaN"
        rank = row.rank_text(len(layout.columns))
        out.append(
            f'<td data-sort="{_num(row.mean_rank)}">{rank}</td><td data-sort="{wins}">{esc(row.wins)}</td></tr>'
        )
    out.append("</tbody></table>")
    out.append('<ul class="footer">' + "".join(f"<li>{esc(line)}</li>" for line in layout.footer) + "</ul>")
    for caption, path in (images or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        out.append(f'<h2>{esc(caption)}</h2><img alt="{esc(caption)}" src="data:image/png;base64,{data}">')
    out.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(out) + "\n"
