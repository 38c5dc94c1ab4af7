"""LaTeX (booktabs) table with dataset column groups; needs \\usepackage{booktabs,graphicx}."""

from __future__ import annotations

import numpy as np

from cxrbench.leaderboard.report.layout import COMPARABLE_MARK, METRIC_NAMES, SINGLE_RUN, WIN_MARK, Layout

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "|": r"$|$",
}


def escape(text: str) -> str:
    out = "".join(_SPECIAL.get(ch, ch) for ch in text)
    return (
        out.replace("±", r"$\pm$").replace("·", r"$\cdot$").replace("√", r"$\surd$").replace("×", r"$\times$")
    )


def _cell_tex(cell) -> str:
    if cell is None or not np.isfinite(cell.mean):
        return "--"
    text = f"{100 * cell.mean:.1f}"
    if np.isfinite(cell.half):
        text += rf" $\pm$ {100 * cell.half:.1f}"
    elif cell.n_runs == 1:
        text += f" {SINGLE_RUN}"
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    if cell.published:
        text = rf"\textit{{{text}}}"
    return text + (r"$^{\blacktriangle}$" if cell.win else "")


def render_latex(layout: Layout) -> str:
    ncols = len(layout.columns)
    lines = [
        "% cxrbench leaderboard; requires \\usepackage{booktabs,graphicx,amssymb}",
        r"\begin{table*}[t]",
        r"\centering",
        r"\resizebox{\textwidth}{!}{%",
        r"\begin{tabular}{l" + "c" * ncols + "cc}",
        r"\toprule",
    ]
    groups, rules, start = [], [], 2
    for name, cols in layout.groups():
        groups.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{{escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(cols) - 1}}}")
        start += len(cols)
    lines.append(" & " + " & ".join(groups) + r" & & \\")
    lines.append(" ".join(rules))
    heads = [f"{escape(c.label)} ({METRIC_NAMES.get(c.metric, c.metric)})" for c in layout.columns]
    lines.append("Encoder & " + " & ".join(heads) + r" & Mean rank & Wins \\")
    lines.append(r"\midrule")
    previous = "measured"
    for row in layout.rows:
        if row.source != previous:
            lines.append(r"\midrule")
            previous = row.source
        label = escape(row.label).replace(COMPARABLE_MARK, r"$^{\dagger}$")
        label = label if row.source == "measured" else rf"\textit{{{label}}}"
        cells = [_cell_tex(row.cells.get(c.task_id)) for c in layout.columns]
        rank = escape(row.rank_text(len(layout.columns))).replace("–", "--")
        lines.append(" & ".join([label, *cells, rank, escape(row.wins)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip\footnotesize"]
    notes = [
        escape(line).replace(WIN_MARK, r"$^{\blacktriangle}$").replace(COMPARABLE_MARK, r"$^{\dagger}$")
        for line in layout.footer
    ]
    lines.append(" \\\\\n".join(notes))
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"
