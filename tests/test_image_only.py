"""Image-only baselines (SimCLR, BYOL, CheXpert-supervised) and the CheXpert labels of MIMIC-CXR."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_profiles import TINY_PRETRAIN

from cxrbench.analysis import analyze_encoder
from cxrbench.baselines import get_method
from cxrbench.baselines.chexpert import COMPETITION_LABELS, binary_targets
from cxrbench.baselines.image_only import nt_xent
from cxrbench.baselines.training import pretrain
from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.base import Problems
from cxrbench.datasets.mimic_cxr import CHEXPERT_LABELS, read_chexpert
from cxrbench.datasets.phantom import mimic_cxr as phantom_mimic
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.encoders import load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import get_profile, select_tasks

IMAGE_ONLY = ("simclr", "byol", "chexpert")
TINY = dataclasses.replace(TINY_PRETRAIN, resolution=32, max_epochs=1, max_train_images=16, max_val_images=8)


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic")
    raw = write_phantom("mimic_cxr", root / "raw", n_images=150, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("mimic_cxr"), raw, root / "prepared", size=128)
    return root / "prepared"


def _write_chexpert(path: Path, rows: list[list[str]]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject_id", "study_id", *CHEXPERT_LABELS])
        writer.writerows(rows)


def test_chexpert_table_reads_raw_codes_and_the_policy_maps_them(tmp_path):
    path = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    codes = dict.fromkeys(CHEXPERT_LABELS, "")
    codes.update({"Atelectasis": "-1.0", "Cardiomegaly": "1.0", "Consolidation": "0.0", "Edema": ""})
    bad = dict.fromkeys(CHEXPERT_LABELS, "")
    bad["Edema"] = "2.0"
    _write_chexpert(
        path,
        [
            ["10000001", "50000001", *codes.values()],
            ["10000001", "50000002", *bad.values()],
            ["10000001", "50000001", *codes.values()],
        ],
    )
    problems = Problems(strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = read_chexpert(path, problems)
    assert list(table) == [("10000001", "50000001")]
    raw = table[("10000001", "50000001")]
    assert raw["Atelectasis"] == -1 and raw["Cardiomegaly"] == 1 and raw["Consolidation"] == 0
    assert raw["Edema"] is None and raw["Pleural Effusion"] is None
    assert [(p.row, "Edema='2.0'" in p.message, "duplicate" in p.message) for p in problems.items] == [
        (3, True, False),
        (4, False, True),
    ]
    assert len(problems.items) == 2
    # U-Ones (the default): uncertain -> 1, blank -> 0; U-Zeros: uncertain -> 0.
    assert COMPETITION_LABELS == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    np.testing.assert_array_equal(binary_targets(raw), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(binary_targets(raw, policy="u_zeros"), [0, 1, 0, 0, 0])
    assert binary_targets(None) is None
    with pytest.raises(CxrbenchError, match="policy"):
        binary_targets(raw, policy="u_maybe")


def test_phantom_chexpert_table_is_in_the_real_format_and_reaches_the_cache(mimic):
    assert phantom_mimic.CHEXPERT == CHEXPERT_LABELS
    codes = [c for c in open_prepared(mimic).split("train").field("chexpert") if c is not None]
    assert codes and all(set(c) == set(CHEXPERT_LABELS) for c in codes)
    seen = {v for c in codes for v in c.values()}
    assert seen == {1, 0, -1, None}  # the phantom writes positives, negatives, uncertain and blanks


def test_nt_xent_is_minimal_for_matching_views():
    torch.manual_seed(0)
    z = torch.randn(6, 16)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(6, 16), 0.1)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", IMAGE_ONLY)
def test_image_only_method_pretrains_exports_and_is_reproducible(mimic, tmp_path, name):
    assert get_method(name).kind == "image_only"
    first = pretrain(name, mimic, tmp_path / "a", TINY, device="cpu")
    second = pretrain(name, mimic, tmp_path / "b", TINY, device="cpu")
    assert [h["epoch"] for h in first.history] == [0, 1]
    assert all(np.isfinite(h["val_loss"]) for h in first.history)
    assert _sha(first.encoder_path) == _sha(second.encoder_path)
    loaded = load_encoder(first.encoder_path)
    assert loaded.report.fraction_loaded == 1.0
    start = load_encoder("random", arch=TINY.arch).encoder.state_dict()
    trained = loaded.encoder.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start if k.endswith("weight"))


@pytest.mark.parametrize("name", ["chexpert", pytest.param("byol", marks=pytest.mark.slow)])
def test_image_only_resume_reaches_the_uninterrupted_weights(mimic, tmp_path, name):
    """chexpert: the plateau scheduler's state; byol: the momentum target (about 60 s, slow)."""
    two = dataclasses.replace(TINY, max_epochs=2)
    straight = pretrain(name, mimic, tmp_path / "straight", two, device="cpu")
    pretrain(name, mimic, tmp_path / "resumed", TINY, device="cpu")
    with pytest.raises(CxrbenchError, match="--resume"):
        pretrain(name, mimic, tmp_path / "resumed", two, device="cpu")
    other = "simclr" if name != "simclr" else "byol"
    with pytest.raises(CxrbenchError, match="does not hold"):
        pretrain(other, mimic, tmp_path / "resumed", two, resume=True, device="cpu")
    resumed = pretrain(name, mimic, tmp_path / "resumed", two, resume=True, device="cpu")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert _sha(resumed.encoder_path) == _sha(straight.encoder_path)


def test_image_only_encoder_loads_in_evaluate_without_options(mimic, prepared_root, tmp_path):
    result = pretrain("simclr", mimic, tmp_path / "simclr", TINY, device="cpu")
    fast = dataclasses.replace(
        get_profile("demo"),
        name="test",
        resolution=96,
        max_epochs=1,
        default_seeds=1,
        max_train_images=16,
        max_eval_images=8,
    )
    options = EvaluateOptions(prepared_root, tmp_path / "runs", "simclr", fast, seeds=1)
    record = evaluate_checkpoint(result.encoder_path, select_tasks("covid_linear"), options)[0].records[-1]
    assert record["status"] == "ok", record.get("error")
    assert record["encoder_load"]["fraction_loaded"] == 1.0
    # `cxrbench analyze` takes the folder too: its encoder file (no report half, no projected regions)
    analysis = analyze_encoder(tmp_path / "simclr", prepared_root / "covid_rural", n_images=4, resolution=64)
    assert analysis["checkpoint"]["path"] == str(result.encoder_path)
    assert analysis["projected_statistics"] is None and analysis["alignment_pairs"] is None
