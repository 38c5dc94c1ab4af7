"""Leaderboard: every number in the tables checked against values computed here with numpy/scipy."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import uuid
import warnings
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from cxrbench.cli.leaderboard import leaderboard_command, rescore_command
from cxrbench.datasets.split_scheme import SplitIdentity, full_reference_identity
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_json
from cxrbench.leaderboard.aggregate import summarize_records
from cxrbench.leaderboard.compare import add_ranks, count_wins, mean_ranks
from cxrbench.leaderboard.report import build_leaderboard, load_published
from cxrbench.protocol import metrics, records
from cxrbench.protocol.record_schema import SCHEMA_VERSION
from cxrbench.protocol.records import load_records, scan_records
from cxrbench.protocol.rescore import rescore_runs
from cxrbench.protocol.sidecar import same_stats
from cxrbench.protocol.tasks import METRICS_VERSION

N_BOOT = 200
SEED = 3
PROTOCOL = "a1b2c3d4e5f60718"
SEG_TASK, NIH_TASK, MAP_TASK, FROC_TASK = (
    "rsna_seg_linear_1",
    "nih_seg_linear",
    "rsna_yolo_frozen_10",
    "object_yolo_frozen",
)
KIND = {SEG_TASK: "dice", NIH_TASK: "dice", MAP_TASK: "map", FROC_TASK: "froc"}
DATASET = {SEG_TASK: "rsna", NIH_TASK: "nih", MAP_TASK: "rsna", FROC_TASK: "object_cxr"}
N_IMAGES = 24
# encoder -> (noise level: lower is better, number of runs)
ENCODERS = {"good": (0.02, 5), "close": (0.14, 3), "mid": (0.15, 4), "weak": (0.35, 3)}
BASELINES = ("mid", "weak")


@dataclass
class Run:
    """What the test itself knows about one synthetic run (the independent side of every check)."""

    encoder: str
    task_id: str
    ids: list[str]
    value: float
    pred: object
    gt: object
    per_image: dict
    status: str = "ok"
    phase: str = "final"
    secondary: dict | None = None  # the other values of metrics.aggregate, stored in "test" as evaluate does


# ---------------------------------------------------------------- synthetic predictions


def _seg_data(rng, noise: float, classes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((N_IMAGES, classes, size, size), bool)
    for i in range(N_IMAGES):
        for c in range(classes):
            if rng.random() < 0.7:
                y, x = rng.integers(0, size // 2, 2)
                gt[i, c, y : y + size // 3, x : x + size // 3] = True
    pred = gt ^ (rng.random(gt.shape) < noise)
    return pred, gt


def _gt_boxes(task_rng) -> list[np.ndarray]:
    out = []
    for _ in range(N_IMAGES):
        k = task_rng.integers(0, 3)
        xy = task_rng.uniform(0, 150, (k, 2))
        wh = task_rng.uniform(20, 60, (k, 2))
        out.append(np.concatenate([xy, xy + wh], axis=1).astype(np.float32))
    return out


def _det_preds(rng, gts: list[np.ndarray], noise: float) -> list[tuple[np.ndarray, np.ndarray]]:
    preds = []
    for gt in gts:
        boxes, scores = [], []
        for box in gt:
            if rng.random() > noise:
                boxes.append(box + rng.normal(0, 60 * noise, 4))
                scores.append(rng.uniform(0.5, 1.0))
        for _ in range(rng.poisson(3 * noise)):
            xy = rng.uniform(0, 170, 2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(15, 50, 2)]))
            scores.append(rng.uniform(0.2, 0.7))
        preds.append((np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)))
    return preds


def _npz_arrays(kind: str, ids: list[str], pred, gt) -> dict[str, np.ndarray]:
    out = {"image_ids": np.array(ids), "kind": np.array(kind)}
    if kind == "dice":
        out.update(pred_masks=np.packbits(pred, axis=-1), gt_masks=np.packbits(gt, axis=-1))
        out["mask_shape"] = np.array(pred.shape, np.int64)
        size = pred.shape[-1]
    else:
        out["pred_boxes"] = np.concatenate([b for b, _ in pred]).reshape(-1, 4).astype(np.float32)
        out["pred_scores"] = np.concatenate([s for _, s in pred]).astype(np.float32)
        out["pred_offsets"] = np.cumsum([0] + [len(s) for _, s in pred]).astype(np.int64)
        out["gt_boxes"] = np.concatenate(gt).reshape(-1, 4).astype(np.float32)
        out["gt_offsets"] = np.cumsum([0] + [len(g) for g in gt]).astype(np.int64)
        size = 224
    out["overlay_index"] = np.array([0, 5, 9], np.int64)
    out["overlay_images"] = np.full((3, size, size), 90, np.uint8)
    return out


def write_record(runs: Path, run: Run, seed: int, legacy: bool = False, **overrides) -> Path:
    """A run record in the docs/formats.md schema (+ its predictions .npz), as evaluate writes it
    (``legacy``: as cxrbench wrote them before the sidecar, schema version 3, statistics inline)."""
    run_id = overrides.pop("run_id", uuid.uuid4().hex)
    kind = KIND[run.task_id]
    record = {
        "schema_version": 3 if legacy else SCHEMA_VERSION,  # 3: statistics inline
        "metrics_version": METRICS_VERSION,
        "run_id": run_id,
        "run_key": f"key-{run_id[:8]}",
        "encoder": run.encoder,
        "checkpoint": {"path": f"/ckpt/{run.encoder}.pt", "identity": f"sha-{run.encoder}", "sha256": None},
        "task_id": run.task_id,
        "dataset": DATASET[run.task_id],
        "metric": kind,
        "phase": run.phase,
        "status": run.status,
        "error": None if run.status == "ok" else "RuntimeError: CUDA out of memory",
        "seed": seed,
        "lr": 1e-3,
        "val": {kind: 0.5},
        "test": {} if run.status != "ok" else {**(run.secondary or {}), kind: run.value},
        "test_per_image": None if run.status != "ok" else run.per_image,
        "history": [{"epoch": 0, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "lr": 1e-3}],
        "best_epoch": 0,
        "wall_time_s": 1.0,
        "protocol_hash": PROTOCOL,
        "profile": "full",
        "versions": {"python": "3"},
        "git_commit": "abc",
        "created": "2024-01-01T00:00:00+00:00",
        "device": "cpu",
        "predictions": None,
    }
    record.update(overrides)
    path = runs / run.encoder / run.task_id / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if run.status == "ok" and run.pred is not None:
        np.savez_compressed(path.with_suffix(".npz"), **_npz_arrays(kind, run.ids, run.pred, run.gt))
        record["predictions"] = path.with_suffix(".npz").name
    if legacy:
        atomic_write_json(path, record)
    else:
        records.write_record(path, record)
    return path


def make_run(encoder: str, task_id: str, noise: float, seed: int, shuffle: bool = False) -> Run:
    """Random predictions of the given quality; per-image stats from metrics.per_image_stats."""
    kind = KIND[task_id]
    task_rng = np.random.default_rng(zlib.crc32(task_id.encode()))  # same ground truth for every run
    rng = np.random.default_rng([seed, zlib.crc32(f"{encoder}/{task_id}".encode())])
    ids = [f"img{i:03d}" for i in range(N_IMAGES)]
    if kind == "dice":
        classes, size = (8, 8) if task_id == NIH_TASK else (1, 16)
        _, gt = _seg_data(task_rng, 0.0, classes, size)
        pred = gt ^ (rng.random(gt.shape) < noise)
    else:
        gt = _gt_boxes(task_rng)
        pred = _det_preds(rng, gt, noise)
    if shuffle:  # store this run's images in another order: aggregation must align them by id
        order = rng.permutation(N_IMAGES)
        ids = [ids[i] for i in order]
        pred = pred[order] if kind == "dice" else [pred[i] for i in order]
        gt = gt[order] if kind == "dice" else [gt[i] for i in order]
    per_image = metrics.per_image_stats(kind, pred, gt, image_ids=ids)
    values = metrics.aggregate(kind, per_image)
    return Run(encoder, task_id, ids, values[kind], pred, gt, per_image, secondary=values)


# ---------------------------------------------------------------- independent statistics


def expected_t(values: list[float]) -> tuple[float, float, float, float]:
    x = np.array([v for v in values if np.isfinite(v)])
    mean = x.mean()
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = x.std(ddof=1)
    half = stats.t.ppf(0.975, x.size - 1) * sd / np.sqrt(x.size)
    return mean, sd, mean - half, mean + half


def expected_replicates(task_id: str, runs: list[Run]) -> np.ndarray:
    """Run-mean metric per bootstrap replicate, written out from the documented resampling rule."""
    ids = sorted(runs[0].ids)
    idx = np.random.default_rng([SEED, zlib.crc32(task_id.encode())]).integers(
        0, len(ids), size=(N_BOOT, len(ids))
    )
    reps = np.zeros(N_BOOT)
    for run in runs:
        order = np.array([run.ids.index(i) for i in ids])  # canonical position -> this run's position
        if KIND[task_id] == "dice":
            p, g = run.pred[order], run.gt[order]
            inter, ps, gs = ((p & g).sum((2, 3)), p.sum((2, 3)), g.sum((2, 3)))
            for b in range(N_BOOT):
                i_, p_, g_ = inter[idx[b]].sum(0), ps[idx[b]].sum(0), gs[idx[b]].sum(0)
                den = p_ + g_
                reps[b] += np.mean(np.where(den > 0, 2 * i_ / np.maximum(den, 1), 1.0))
        else:
            reps += [
                metrics.aggregate(KIND[task_id], run.per_image, order[row])[KIND[task_id]] for row in idx
            ]
    return reps / len(runs)


def expected_rank(mean: float, others: list[float]) -> float:
    """Average rank, higher is better, written out: 1 + #better + #tied / 2."""
    return 1 + sum(o > mean for o in others) + 0.5 * sum(o == mean for o in others)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four encoders x four tasks (dice, NIH 8-class dice, mAP, FROC), plus noise files; one build."""
    runs_dir = tmp_path_factory.mktemp("runs")
    truth: dict[tuple[str, str], list[Run]] = {}
    for encoder, (noise, n_runs) in ENCODERS.items():
        for task_id in KIND:
            for seed in range(n_runs):
                run = make_run(encoder, task_id, noise, seed, shuffle=(encoder == "mid" and seed == 1))
                write_record(runs_dir, run, seed)
                truth.setdefault((encoder, task_id), []).append(run)
    # noise that must not change any number: an lr-search run, a failed run, an unrelated json
    lr_run = make_run("good", SEG_TASK, 0.9, 99)
    lr_run.phase = "lr_search"
    write_record(runs_dir, lr_run, 99)
    failed = Run("weak", MAP_TASK, [], math.nan, None, None, {}, status="failed")
    write_record(runs_dir, failed, 7)
    (runs_dir / "manifest.json").write_text(json.dumps({"splits": [1, 2]}))
    out = tmp_path_factory.mktemp("out")
    result = build_leaderboard(
        runs_dir, out, baselines=BASELINES, n_boot=N_BOOT, n_boot_detection=N_BOOT, seed=SEED
    )
    return runs_dir, out, truth, result


def expected_table(truth: dict[tuple[str, str], list[Run]]) -> pd.DataFrame:
    rows = []
    for (encoder, task_id), runs in truth.items():
        ok = [r for r in runs if r.status == "ok" and r.phase == "final" and np.isfinite(r.value)]
        mean, sd, low, high = expected_t([r.value for r in ok])
        reps = expected_replicates(task_id, ok)
        rows.append(
            dict(
                encoder=encoder,
                task_id=task_id,
                n_runs=len(ok),
                mean=mean,
                sd=sd,
                ci95_low=low,
                ci95_high=high,
                boot_low=np.percentile(reps, 2.5),
                boot_high=np.percentile(reps, 97.5),
                reps=reps,
            )
        )
    table = pd.DataFrame(rows)
    table["rank"] = [
        expected_rank(
            r.mean, list(table[(table.task_id == r.task_id) & (table.encoder != r.encoder)]["mean"])
        )
        for r in table.itertuples()
    ]
    return table


def expected_wins(table: pd.DataFrame) -> dict[tuple[str, str], tuple[bool, float]]:
    out = {}
    for r in table[~table.encoder.isin(BASELINES)].itertuples():
        base = table[(table.task_id == r.task_id) & table.encoder.isin(BASELINES)]
        pvals = [(1 + np.sum(r.reps - b.reps <= 0)) / (1 + N_BOOT) for b in base.itertuples()]
        beats = all(r.mean > m for m in base["mean"])
        out[(r.encoder, r.task_id)] = (beats and max(pvals) < 0.05, max(pvals))
    return out


# ---------------------------------------------------------------- the numbers


def test_csv_numbers_match_independent_statistics(world):
    _, out, truth, result = world
    csv = pd.read_csv(out / "leaderboard.csv")
    required = [
        "encoder",
        "task_id",
        "metric",
        "n_runs",
        "mean",
        "sd",
        "ci95_low",
        "ci95_high",
        "boot_low",
        "boot_high",
        "rank",
        "source",
    ]
    assert list(csv.columns[: len(required)]) == required
    measured = csv[csv.source == "measured"].set_index(["encoder", "task_id"])
    expected = expected_table(truth).set_index(["encoder", "task_id"])
    assert set(measured.index) == set(expected.index)
    for key, exp in expected.iterrows():
        got = measured.loc[key]
        assert got["n_runs"] == exp["n_runs"]
        assert got["metric"] == KIND[key[1]]
        for col in ("mean", "sd", "ci95_low", "ci95_high", "boot_low", "boot_high", "rank"):
            assert np.isclose(got[col], exp[col], rtol=1e-9, atol=1e-12), (key, col, got[col], exp[col])
    # the failed run is counted, not averaged; lr-search runs and foreign json files are ignored
    assert measured.loc[("weak", MAP_TASK), "n_failed"] == 1
    assert measured["n_failed"].sum() == 1
    assert not result.scan.skipped


def test_wins_use_paired_bootstrap_against_every_baseline(world):
    _, out, truth, result = world
    expected = expected_wins(expected_table(truth))
    per_task = result.wins.per_task.set_index(["encoder", "task_id"])
    for key, (win, p) in expected.items():
        assert bool(per_task.loc[key, "win"]) == win, key
        assert np.isclose(per_task.loc[key, "p_value"], p)
    assert any(w for w, _ in expected.values()) and not all(w for w, _ in expected.values())
    csv = pd.read_csv(out / "leaderboard.csv").set_index(["encoder", "task_id"])
    for key, (win, p) in expected.items():
        assert bool(csv.loc[key, "win"]) == win and np.isclose(csv.loc[key, "p_value"], p)
    counts = result.wins.per_encoder.set_index("encoder")
    for encoder in ("good", "close"):
        assert counts.loc[encoder, "wins"] == sum(w for (e, _), (w, _) in expected.items() if e == encoder)
        assert counts.loc[encoder, "n_compared"] == len(KIND)


def _markdown_rows(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split(" | ")]  # noqa: E731
    header = split(lines[0])
    return header, {split(ln)[0].strip("*").replace("\\", ""): split(ln) for ln in lines[2:]}


def test_markdown_cells_bold_ranks_and_wins(world):
    _, _, truth, result = world
    table = expected_table(truth)
    wins = expected_wins(table)
    header, rows = _markdown_rows(result.markdown)
    tasks_in_order = [
        t for t in ("rsna_yolo_frozen_10", "rsna_seg_linear_1", "object_yolo_frozen", "nih_seg_linear")
    ]
    assert header[1:5] == [
        "RSNA YOLO frozen 10% (mAP)",
        "RSNA Linear 1% (Dice)",
        "Object-CXR YOLO frozen (FROC)",
        "NIH Linear (Dice)",
    ]
    assert header[-2:] == ["Mean rank", "Wins"]
    for r in table.itertuples():
        col = 1 + tasks_in_order.index(r.task_id)
        text = f"{100 * r.mean:.1f} ± {100 * (r.ci95_high - r.ci95_low) / 2:.1f}"
        if wins.get((r.encoder, r.task_id), (False, 0))[0]:
            text += " ▲"
        best = table[table.task_id == r.task_id]["mean"].max()
        assert rows[r.encoder][col] == (f"**{text}**" if r.mean == best else text), (r.encoder, r.task_id)
    for encoder, grp in table.groupby("encoder"):
        assert rows[encoder][-2] == f"{grp['rank'].mean():.2f}"
        if encoder in BASELINES:
            assert rows[encoder][-1] == "baseline"
        else:
            k = sum(w for (e, _), (w, _) in wins.items() if e == encoder)
            assert rows[encoder][-1] == f"{k}/{len(KIND)}"
    # measured rows come best mean rank first
    measured_order = [name for name in rows if "(published)" not in name]
    assert measured_order == list(table.groupby("encoder")["rank"].mean().sort_values().index)
    footer = result.markdown.split("\n\n")[-1]
    assert "t(0.975, n-1)" in footer and "paired bootstrap" in footer and f"{N_BOOT} replicates" in footer
    assert "Runs per cell" in footer and "1 failed run(s) were excluded" in footer


def test_published_rows_shown_but_never_ranked(world):
    _, out, _, result = world
    published = load_published()
    assert set(published["source"]) == {"published"}
    lovt = published[(published.encoder == "LoVT 100% (published)") & (published.task_id == MAP_TASK)].iloc[0]
    assert np.isclose(lovt["mean"], 0.164) and np.isclose(lovt["ci95_high"] - lovt["mean"], 0.013)
    assert "ImageNet (published)" in set(published.encoder)
    assert len(published) == 16 * 18
    csv = pd.read_csv(out / "leaderboard.csv")
    pub = csv[csv.source == "published"]
    assert len(pub) == 16 * 4 and pub["rank"].isna().all() and pub["win"].isna().all()
    _, rows = _markdown_rows(result.markdown)
    assert rows["LoVT 100% (published)"][1] == "16.4 ± 1.3"
    assert all("**" not in cell for name, cells in rows.items() if "(published)" in name for cell in cells)
    assert "*LoVT 100% (published)*" in result.markdown
    assert "Joint Learning of Localized Representations" in result.markdown
    ranks = mean_ranks(add_ranks(result.summary.table))
    assert set(ranks.encoder) == set(ENCODERS)
    # results/published keeps the source header and the citation
    head = (
        (Path(__file__).parents[1] / "cxrbench/leaderboard/data/lovt_published.csv")
        .read_text()
        .splitlines()[:3]
    )
    assert (
        head[0].startswith("# Reference: Müller")
        and "ECCV 2022" in head[0]
        and head[1].startswith("# Published LoVT")
    )


def test_latex_and_files(world):
    _, out, _, result = world
    tex = (out / "leaderboard.tex").read_text()
    for token in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\multicolumn{2}{c}{RSNA Pneumonia}",
        r"\cmidrule(lr){2-3}",
    ):
        assert token in tex
    assert "rsna_yolo" not in tex.replace(r"\_", "_").split(r"\bottomrule")[0] or r"\_" in tex
    good = next(ln for ln in tex.splitlines() if ln.startswith("good &"))
    md_good = _markdown_rows(result.markdown)[1]["good"]
    assert good.count("&") == len(md_good) - 1
    first = md_good[1].replace("**", "").replace(" ▲", "")
    assert first.replace(" ± ", r" $\pm$ ") in good
    for name in ("csv", "markdown", "latex", "html", "bars", "ranks"):
        assert result.paths[name].is_file() and result.paths[name].stat().st_size > 0
    assert (out / "plots" / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in result.overlays) == sorted(f"{t}.png" for t in KIND)


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.rows, self.section, self.external, self.tags = [], [], None, [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href"):
            value = (attrs.get(key) or "").strip().lower()
            if value and not value.startswith(("data:", "#")):
                self.external.append((tag, key, value))
        if tag in ("thead", "tbody"):
            self.section = tag
        if tag == "tr":
            self.rows.append((self.section, []))
        if tag in ("td", "th"):
            self.rows[-1][1].append(int(attrs.get("colspan", 1)))


def test_html_is_self_contained_sortable_table(world):
    _, out, truth, _ = world
    page = (out / "leaderboard.html").read_text()
    good = expected_table(truth).set_index(["encoder", "task_id"]).loc[("good", SEG_TASK)]
    tooltip = f"bootstrap interval over test images [{100 * good.boot_low:.2f}, {100 * good.boot_high:.2f}]"
    assert tooltip in page
    parser = _TableParser()
    parser.feed(page)
    assert not parser.external, parser.external
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert not re.search(r"https?://|url\(", page)
    head = [cells for section, cells in parser.rows if section == "thead"]
    body = [cells for section, cells in parser.rows if section == "tbody"]
    n_cols = 1 + len(KIND) + 2
    assert len(head) == 2 and sum(head[0]) == n_cols and len(head[1]) == n_cols
    assert len(body) == len(ENCODERS) + 16 and all(len(r) == n_cols for r in body)
    assert page.count('class="sortable"') + page.count('class="encoder sortable"') == n_cols
    assert "addEventListener('click'" in page and page.count("data:image/png;base64,") == 2
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        pytest.skip(reason="chromium not installed: the page structure was checked with html.parser only")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (out / "leaderboard.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'id="leaderboard"' in dom and dom.count("<tr") == len(head) + len(body)


# ---------------------------------------------------------------- edge cases


def _small_world(
    tmp_path: Path, specs: dict[str, tuple[float, int]], task_id: str = SEG_TASK
) -> tuple[Path, dict]:
    runs_dir = tmp_path / "runs"
    truth = {}
    for encoder, (noise, n) in specs.items():
        for seed in range(n):
            run = make_run(encoder, task_id, noise, seed)
            write_record(runs_dir, run, seed)
            truth.setdefault(encoder, []).append(run)
    return runs_dir, truth


def test_single_run_has_no_interval_and_is_flagged(tmp_path):
    runs_dir, truth = _small_world(tmp_path, {"solo": (0.1, 1), "pair": (0.2, 2)})
    result = build_leaderboard(
        runs_dir, tmp_path / "out", include_published=False, n_boot=50, plots=False, overlays=False
    )
    row = result.table.set_index("encoder").loc["solo"]
    assert row["n_runs"] == 1 and np.isclose(row["mean"], truth["solo"][0].value)
    assert all(np.isnan(row[c]) for c in ("sd", "ci95_low", "ci95_high"))
    assert np.isfinite(row["boot_low"]) and "single run" in row["flags"]
    _, rows = _markdown_rows(result.markdown)
    assert rows["solo"][1].replace("**", "") == f"{100 * truth['solo'][0].value:.1f} (n=1)"
    assert "Flag: solo / rsna_seg_linear_1: single run" in result.markdown


def test_ties_share_the_average_rank(tmp_path):
    runs_dir, truth = _small_world(tmp_path, {"a": (0.1, 2), "c": (0.3, 2)})
    for seed, run in enumerate(truth["a"]):  # "b" repeats a's predictions exactly: equal means
        write_record(runs_dir, Run("b", SEG_TASK, run.ids, run.value, run.pred, run.gt, run.per_image), seed)
    result = build_leaderboard(
        runs_dir, tmp_path / "out", include_published=False, n_boot=50, plots=False, overlays=False
    )
    ranks = result.table.set_index("encoder")["rank"]
    assert ranks["a"] == ranks["b"] == 1.5 and ranks["c"] == 3
    _, rows = _markdown_rows(result.markdown)
    assert (
        rows["a"][1].startswith("**") and rows["b"][1].startswith("**") and not rows["c"][1].startswith("**")
    )


def test_nan_metric_excluded_and_counted(tmp_path):
    runs_dir, truth = _small_world(tmp_path, {"enc": (0.1, 3)})
    bad = make_run("enc", SEG_TASK, 0.1, 9)
    bad.value = math.nan
    write_record(runs_dir, bad, 9)
    summary = summarize_records(load_records(runs_dir), n_boot=N_BOOT, seed=SEED)
    row = summary.table.iloc[0]
    mean, sd, low, high = expected_t([r.value for r in truth["enc"]])
    assert row["n_runs"] == 3 and row["n_nan"] == 1 and "1 NaN value(s) excluded" in row["flags"]
    assert np.allclose([row["mean"], row["sd"], row["ci95_low"], row["ci95_high"]], [mean, sd, low, high])
    reps = expected_replicates(SEG_TASK, truth["enc"])
    assert np.allclose([row["boot_low"], row["boot_high"]], np.percentile(reps, [2.5, 97.5]))


def test_duplicate_run_id_refused(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 1)})
    first = next(runs_dir.rglob("*.json"))
    copy = runs_dir / "copy" / first.name
    copy.parent.mkdir()
    shutil.copy(first, copy)
    with pytest.raises(CxrbenchError, match="duplicate run ids") as info:
        summarize_records(load_records(runs_dir))
    assert str(first) in str(info.value) and str(copy) in str(info.value)


def test_mixed_protocol_hashes_refused_or_flagged(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2), "other": (0.2, 2)})
    write_record(runs_dir, make_run("enc", SEG_TASK, 0.1, 5), 5, protocol_hash="ffff000011112222")
    with pytest.raises(CxrbenchError, match="different protocol hashes") as info:
        build_leaderboard(
            runs_dir, tmp_path / "out", include_published=False, n_boot=20, plots=False, overlays=False
        )
    assert "ffff000011112222" in str(info.value) and "--allow-mixed" in str(info.value)
    result = build_leaderboard(
        runs_dir,
        tmp_path / "out",
        include_published=False,
        n_boot=20,
        plots=False,
        overlays=False,
        allow_mixed=True,
    )
    flags = result.table.set_index("encoder")["flags"]
    assert "mixed protocol hashes" in flags["enc"] and "mixed protocol hashes" not in flags["other"]
    assert "Note: mixed protocol hashes allowed" in result.markdown


def test_mixed_checkpoints_under_one_name_refused(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 1)})
    write_record(
        runs_dir,
        make_run("enc", SEG_TASK, 0.1, 5),
        5,
        checkpoint={"path": "x", "identity": "other", "sha256": None},
    )
    with pytest.raises(CxrbenchError, match="different checkpoints"):
        summarize_records(load_records(runs_dir))


FULL_REFERENCE = full_reference_identity().as_dict()
PHANTOM_SUBSET = {**FULL_REFERENCE, "subset": True}
BY_PATIENT = SplitIdentity("patient").as_dict()


def _split_world(tmp_path: Path, runs: dict[str, dict]) -> Path:
    """Two runs per encoder; `runs`: encoder -> record overrides (its splits, profile)."""
    runs_dir = tmp_path / "runs"
    for encoder, overrides in runs.items():
        for seed in range(2):
            write_record(runs_dir, make_run(encoder, SEG_TASK, 0.1 + 0.05 * seed, seed), seed, **overrides)
    return runs_dir


def _build(runs_dir: Path, out: Path, **kwargs):
    return build_leaderboard(runs_dir, out, n_boot=20, plots=False, overlays=False, **kwargs)


def test_rows_on_the_full_reference_splits_and_profile_are_marked_comparable(tmp_path):
    runs_dir = _split_world(tmp_path, {"ref": {"splits": FULL_REFERENCE}})
    result = _build(runs_dir, tmp_path / "out")
    table = result.table.set_index("encoder")
    assert table.loc["ref", "comparable"] == True  # noqa: E712 (a numpy bool)
    assert table.loc["ref", "splits"] == "reference splits"
    _, rows = _markdown_rows(result.markdown)
    assert "ref †" in rows and "LoVT 100% (published)" in rows  # the published rows are beside it
    assert "- †: comparable with the published rows, i.e. measured on the full reference split lists" in (
        result.markdown
    )
    assert "Rows without †" not in result.markdown
    assert r"ref $^{\dagger}$" in (tmp_path / "out" / "leaderboard.tex").read_text()
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert csv[csv.source == "measured"]["comparable"].tolist() == [True]


def test_phantom_subset_and_demo_profile_rows_are_not_comparable(tmp_path):
    runs_dir = _split_world(
        tmp_path,
        {
            "ref": {"splits": FULL_REFERENCE},
            "phantom": {"splits": PHANTOM_SUBSET},
            "demo": {"splits": FULL_REFERENCE, "profile": "demo"},
            "old_lists": {"splits": {**FULL_REFERENCE, "lists_sha256": "0" * 64}},
        },
    )
    result = _build(runs_dir, tmp_path / "out", include_published=False)
    comparable = result.table.set_index("encoder")["comparable"]
    assert comparable.to_dict() == {"ref": True, "phantom": False, "demo": False, "old_lists": False}
    _, rows = _markdown_rows(result.markdown)
    assert {"ref †", "phantom", "demo", "old_lists"} <= set(rows)
    footer = next(line for line in result.markdown.splitlines() if "Rows without †" in line)
    assert "reference splits (a subset: phantom or incomplete data)" in footer
    assert "demo, full profile" in footer


def test_unrecorded_splits_are_never_comparable(tmp_path):
    runs_dir = _split_world(tmp_path, {"old": {}})  # a record written before splits were recorded
    result = _build(runs_dir, tmp_path / "out", include_published=False)
    assert result.table.set_index("encoder").loc["old", "comparable"] == False  # noqa: E712
    assert "splits not recorded" in result.markdown


@pytest.mark.parametrize(
    "other, name",
    [(BY_PATIENT, "patient"), (None, "unrecorded")],
)
def test_mixed_split_schemes_are_refused_even_with_allow_mixed(tmp_path, other, name):
    runs_dir = _split_world(
        tmp_path, {"ref": {"splits": FULL_REFERENCE}, "other": {} if other is None else {"splits": other}}
    )
    for allow_mixed in (False, True):
        with pytest.raises(CxrbenchError, match="different kinds of data split") as info:
            _build(runs_dir, tmp_path / "out", allow_mixed=allow_mixed)
        message = str(info.value)
        assert f"{name} (other/{SEG_TASK})" in message and f"reference (ref/{SEG_TASK})" in message
        assert "--splits" in message


def test_failed_and_malformed_records(tmp_path):
    runs_dir, truth = _small_world(tmp_path, {"enc": (0.1, 2)})
    write_record(runs_dir, Run("enc", SEG_TASK, [], math.nan, None, None, {}, status="failed"), 3)
    write_record(runs_dir, Run("dead", SEG_TASK, [], math.nan, None, None, {}, status="failed"), 0)
    broken = runs_dir / "enc" / SEG_TASK / "broken.json"
    broken.write_text('{"run_id": "x", "schema_version": 1,')
    with pytest.warns(UserWarning, match=re.escape(str(broken))):
        scan = scan_records(runs_dir)
    assert [p for p, _ in scan.skipped] == [broken]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = build_leaderboard(
            runs_dir, tmp_path / "out", include_published=False, n_boot=20, plots=False, overlays=False
        )
    table = result.table.set_index("encoder")
    assert table.loc["enc", "n_failed"] == 1 and table.loc["enc", "n_runs"] == 2
    assert np.isclose(table.loc["enc", "mean"], np.mean([r.value for r in truth["enc"]]))
    assert (
        table.loc["dead", "n_runs"] == 0
        and np.isnan(table.loc["dead", "mean"])
        and np.isnan(table.loc["dead", "rank"])
    )
    assert "2 failed run(s) were excluded" in result.markdown
    assert "1 unreadable record file(s) were skipped" in result.markdown


def test_unknown_baseline_is_a_clear_error(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2)})
    summary = summarize_records(load_records(runs_dir), n_boot=10)
    with pytest.raises(CxrbenchError, match="unknown baseline"):
        count_wins(summary, ["nope"])


def test_overlays_skip_missing_or_broken_predictions(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2)})
    for npz in runs_dir.rglob("*.npz"):
        npz.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="no overlays for enc"):
        result = build_leaderboard(
            runs_dir, tmp_path / "out", include_published=False, n_boot=10, plots=False
        )
    assert result.overlays == []
    runs_dir2, _ = _small_world(tmp_path / "b", {"enc": (0.1, 1)})
    for rec in runs_dir2.rglob("*.json"):
        data = json.loads(rec.read_text())
        data["predictions"] = None
        rec.write_text(json.dumps(data))
    assert (
        build_leaderboard(
            runs_dir2, tmp_path / "out2", include_published=False, n_boot=10, plots=False
        ).overlays
        == []
    )


def test_overlays_are_redrawn_only_when_a_predictions_file_changes(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2)})
    kw = dict(include_published=False, n_boot=10, plots=False)
    first = build_leaderboard(runs_dir, tmp_path / "out", **kw).overlays
    assert first
    stamps = {p: p.stat().st_mtime_ns for p in first}
    again = build_leaderboard(runs_dir, tmp_path / "out", **kw).overlays
    assert sorted(again) == sorted(first) and {p: p.stat().st_mtime_ns for p in again} == stamps
    for npz in runs_dir.rglob("*.npz"):  # same content, new identity: the mosaics are drawn again
        os.utime(npz, ns=(npz.stat().st_atime_ns, npz.stat().st_mtime_ns + 10**9))
    redrawn = build_leaderboard(runs_dir, tmp_path / "out", **kw).overlays
    assert all(p.stat().st_mtime_ns != stamps[p] for p in redrawn)


def test_bootstrap_cache_reused_until_a_record_changes(tmp_path, monkeypatch):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2), "base": (0.3, 2)}, task_id=MAP_TASK)
    kw = dict(include_published=False, n_boot=30, n_boot_detection=30, plots=False, overlays=False)
    first = build_leaderboard(runs_dir, tmp_path / "out", baselines=["base"], **kw)
    cached = sorted((tmp_path / "out" / ".cache" / "bootstrap").glob("*.npy"))
    assert len(cached) == 4

    def refuse(*args, **kwargs):
        raise AssertionError("cached replicates were recomputed")

    monkeypatch.setattr(metrics, "aggregate", refuse)
    second = build_leaderboard(runs_dir, tmp_path / "out", baselines=["base"], **kw)
    pd.testing.assert_frame_equal(first.table, second.table)
    monkeypatch.undo()
    path = next((runs_dir / "enc").rglob("*.json"))  # a changed record (e.g. re-scored) is resampled again
    record = records.read_record(path)
    stats = dict(record["test_per_image"])
    stats["n_gt"] = [stats["n_gt"][0] + 1, *stats["n_gt"][1:]]
    record["test_per_image"] = stats
    records.write_record(path, record)
    build_leaderboard(runs_dir, tmp_path / "out", baselines=["base"], **kw)
    assert len(list((tmp_path / "out" / ".cache" / "bootstrap").glob("*.npy"))) == 5


@pytest.mark.parametrize("task_id", [SEG_TASK, MAP_TASK, FROC_TASK])
def test_rescore_restores_tampered_values(tmp_path, task_id):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2)}, task_id=task_id)
    path = next(runs_dir.rglob("*.json"))
    original = json.loads(path.read_text())
    assert rescore_runs(runs_dir) == 0  # nothing to fix: nothing rewritten
    tampered = records.read_record(path)
    kind = KIND[task_id]
    tampered["test"][kind] = 0.123
    stats = dict(tampered["test_per_image"])
    stats[kind] = [0.5, *stats[kind][1:]]
    tampered["test_per_image"] = stats
    records.write_record(path, tampered)
    assert json.loads(path.read_text())["per_image_sidecar"] != original["per_image_sidecar"]
    assert rescore_runs(runs_dir) == 1
    restored = json.loads(path.read_text())
    assert np.isclose(restored["test"][kind], original["test"][kind])
    assert restored["per_image_sidecar"]["sha256"] == original["per_image_sidecar"]["sha256"]
    assert len(list(path.parent.glob("*.stats.npz"))) == 2  # one per run: the tampered file is gone
    assert restored["rescored"][0]["old_test"][kind] == 0.123 and "time" in restored["rescored"][0]
    assert "_source" not in restored


def test_cli_commands(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2), "base": (0.3, 2)})
    app = typer.Typer()
    app.command("leaderboard")(leaderboard_command)
    app.command("rescore")(rescore_command)
    runner = CliRunner()
    out = tmp_path / "out"
    args = [
        "leaderboard",
        "--runs-dir",
        str(runs_dir),
        "--out",
        str(out),
        "--baseline",
        "base",
        "--n-boot",
        "50",
        "--no-plots",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (
        (out / "leaderboard.md").is_file() and "leaderboard.csv" in res.output and "Mean rank" in res.output
    )
    res = runner.invoke(app, ["rescore", str(runs_dir)])
    assert res.exit_code == 0 and "0 record(s)" in res.output
    res = runner.invoke(app, [*args[:-3], "--baseline", "missing"])
    assert res.exit_code == 2 and "unknown baseline" in res.output


@pytest.mark.parametrize("task_id", [MAP_TASK, FROC_TASK, SEG_TASK])
def test_records_of_older_metric_definitions_are_refused_until_rescored(tmp_path, task_id):
    """A metric change bumps the metrics version: the leaderboard refuses older records, naming
    `cxrbench rescore`, which recomputes them from their predictions files and says what changed."""
    runs_dir, truth = _small_world(tmp_path, {"enc": (0.2, 2)}, task_id=task_id)
    kind = KIND[task_id]
    paths = sorted(runs_dir.rglob("*.json"))
    current = records.read_record(paths[0])  # its per-image statistics read from the sidecar
    old = json.loads(paths[0].read_text())  # rewritten as schema version 2 wrote it: statistics inline
    del old["metrics_version"]
    old.update(schema_version=2, per_image_sidecar=None)
    old["test"] = {kind: current["test"][kind] + 0.05, "retired_value": 0.5}
    ids = list(current["test_per_image"]["image_ids"])
    old["test_per_image"] = {"image_ids": ids, "old_stats": [0] * N_IMAGES}
    paths[0].write_text(json.dumps(old))
    with pytest.raises(CxrbenchError, match=r"cxrbench rescore RUNS_DIR") as info:
        summarize_records(load_records(runs_dir), n_boot=0)
    assert str(paths[0]) in str(info.value) and "metrics_version 1" in str(info.value)
    app = typer.Typer()
    app.command("rescore")(rescore_command)
    app.command("other")(lambda: None)  # two commands: the CLI keeps the command name
    res = CliRunner().invoke(app, ["rescore", str(runs_dir)])
    assert res.exit_code == 0, res.output
    assert (
        f"changed {kind}: changed in 1 run(s)" in res.output and "retired_value: changed in 1" in res.output
    )
    assert "1 record(s) re-scored" in res.output
    rescored = records.read_record(paths[0])
    assert rescored["metrics_version"] == METRICS_VERSION and rescored["schema_version"] == SCHEMA_VERSION
    assert rescored["test"] == current["test"]
    assert same_stats(rescored["test_per_image"], current["test_per_image"])
    assert rescored["rescored"][0]["old_test"] == old["test"]
    summary = summarize_records(load_records(runs_dir), n_boot=20)
    assert summary.table.iloc[0]["n_runs"] == 2
    assert np.isclose(summary.table.iloc[0]["mean"], np.mean([r.value for r in truth["enc"]]))


# ---------------------------------------------------------------- per-image statistics sidecar


def _legacy_and_sidecar_worlds(tmp_path: Path) -> tuple[Path, Path]:
    """The same runs twice: as version-2 records (statistics inline), and as written today."""
    legacy, current = tmp_path / "legacy", tmp_path / "current"
    for task_id in (SEG_TASK, NIH_TASK, MAP_TASK, FROC_TASK):
        for encoder, noise in (("a", 0.1), ("b", 0.3)):
            for seed in range(2):
                run = make_run(encoder, task_id, noise, seed, shuffle=seed == 1)
                run_id = uuid.uuid4().hex
                write_record(legacy, run, seed, legacy=True, run_id=run_id)
                write_record(current, run, seed, run_id=run_id)
    return legacy, current


@pytest.mark.parametrize("n_boot", [(1000, 200), (40, 30)])  # defaults: replicates stored in the sidecar
def test_same_leaderboard_with_and_without_the_sidecar(tmp_path, monkeypatch, n_boot):
    legacy, current = _legacy_and_sidecar_worlds(tmp_path)
    old = load_records(legacy)
    assert all(not isinstance(r["test_per_image"], records.SidecarStats) for r in old)
    on_disk = json.loads(next(current.rglob("*.json")).read_text())
    assert on_disk["test_per_image"] == {} and on_disk["per_image_sidecar"]["sha256"]
    kw = {"n_boot": n_boot[0], "n_boot_detection": n_boot[1]}
    expected = summarize_records(old, **kw)
    if n_boot == (1000, 200):  # the stored replicates are read, never recomputed

        def refuse(*args, **kwargs):
            raise AssertionError("stored replicates were recomputed")

        monkeypatch.setattr(metrics, "bootstrap_aggregate", refuse)
    new = load_records(current)
    got = summarize_records(new, **kw)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(expected.table, got.table)
    assert expected.image_sets == got.image_sets
    for key, reps in expected.replicates.items():
        np.testing.assert_array_equal(reps, got.replicates[key])
    for rec in new:  # the statistics themselves read back unchanged
        twin = next(r for r in old if r["run_id"] == rec["run_id"])
        assert dict(rec["test_per_image"]) == twin["test_per_image"]


def test_rescore_moves_old_records_statistics_into_a_sidecar(tmp_path):
    legacy, _ = _legacy_and_sidecar_worlds(tmp_path)
    before = summarize_records(load_records(legacy), n_boot=40, n_boot_detection=30)
    sizes = {p: p.stat().st_size for p in legacy.rglob("*.json")}
    assert rescore_runs(legacy) == len(sizes)  # upgraded and rewritten, values unchanged
    for path in sizes:
        on_disk = json.loads(path.read_text())
        assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["test_per_image"] == {}
        assert (path.parent / on_disk["per_image_sidecar"]["file"]).is_file()
    after = summarize_records(load_records(legacy), n_boot=40, n_boot_detection=30)
    pd.testing.assert_frame_equal(before.table, after.table)
    assert rescore_runs(legacy) == 0


def test_a_damaged_or_missing_sidecar_is_flagged_not_trusted(tmp_path):
    runs_dir, _ = _small_world(tmp_path, {"enc": (0.1, 2)}, task_id=MAP_TASK)
    first, second = sorted(runs_dir.rglob("*.stats.npz"))
    data = bytearray(first.read_bytes())
    data[-30] ^= 0xFF
    first.write_bytes(bytes(data))
    row = summarize_records(load_records(runs_dir), n_boot=30, n_boot_detection=30).table.iloc[0]
    assert "does not match the sha256 in its record" in row["flags"] and np.isnan(row["boot_low"])
    assert np.isfinite(row["mean"])  # the test values themselves are still used
    second.unlink()
    record_path = next(p for p in runs_dir.rglob("*.json") if second.name.startswith(p.stem + "."))
    assert records.read_record(record_path) is None  # evaluate re-runs such a run
