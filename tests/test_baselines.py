"""Pre-training baselines end to end on phantom MIMIC-CXR: data, models, methods, training, export, evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from tiny_profiles import TINY_PRETRAIN
from typer.testing import CliRunner

from cxrbench.baselines import MethodConfig, get_method, method_names, register_method, unregister_method
from cxrbench.baselines.data import PairCollator, PretrainPairs, build_offline_tokenizer
from cxrbench.baselines.methods import method_loss
from cxrbench.baselines.models import ImageModel, PretrainModel, ReportModel
from cxrbench.baselines.training import CHECKPOINT, pretrain
from cxrbench.cli.pretrain import pretrain_command
from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.encoders import load_encoder
from cxrbench.errors import CxrbenchError
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.tasks import get_profile, select_tasks

TINY = TINY_PRETRAIN
TRAINED = [m for m in method_names() if get_method(m).trains]
EVAL_FAST = dataclasses.replace(
    get_profile("demo"),
    name="test",
    resolution=96,
    max_epochs=3,
    default_seeds=1,
    max_train_images=24,
    max_eval_images=16,
)


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic")
    raw = write_phantom("mimic_cxr", root / "raw", n_images=150, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(get_adapter("mimic_cxr"), raw, root / "prepared", size=128)
    return root / "prepared"


@pytest.fixture(scope="module")
def tokenizer(mimic, tmp_path_factory):
    split = open_prepared(mimic).split("train")
    texts = [" ".join(s) for s in split.field("sentences")]
    return build_offline_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


def _pairs(mimic, augment=True, split="train"):
    ds = open_prepared(mimic)
    return PretrainPairs(ds.split(split), 64, ds.stats["mean"], ds.stats["std"], augment, seed=0)


def _model(config: MethodConfig, tokenizer) -> PretrainModel:
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        add_pooling_layer=False,
    )
    return PretrainModel(
        ImageModel("resnet18", config.image_pooling),
        ReportModel(bert, config.sentence_pooling),
        64,
        32,
        config.projection,
        local=config.needs_local_projections,
        cross_attention=config.needs_cross_attention,
        learnable_tau=config.global_tau if config.learnable_tau else None,
    )


# ------------------------------------------------------------------------------------------------- data
def test_offline_tokenizer_marks_each_tokens_sentence(mimic, tokenizer):
    assert tokenizer.vocab_size <= 300 and tokenizer.cls_token_id is not None
    items = [
        {"image": torch.zeros(3, 8, 8), "sentences": ["Heart size is normal.", "No pneumothorax."]},
        {"image": torch.zeros(3, 8, 8), "sentences": ["The lungs are clear."]},
    ]
    batch = PairCollator(tokenizer, max_length=64)(items)
    ids, owner = batch["input_ids"], batch["sentence_index"]
    assert ids[0, 0] == tokenizer.cls_token_id and owner[0, 0] == -1
    for k, sentence in enumerate(items[0]["sentences"]):
        text = tokenizer.decode(ids[0][owner[0] == k])
        assert text.replace(" ", "") == sentence.lower().replace(" ", "")
    assert batch["sentence_mask"].tolist() == [[True, True], [True, False]]
    assert (owner[1][batch["attention_mask"][1] == 0] == -1).all()
    short = PairCollator(tokenizer, max_length=6)(items)
    assert short["input_ids"].shape[1] <= 6 and short["input_ids"][0, -1] == tokenizer.sep_token_id


def test_augmentation_is_seeded_per_epoch_and_shuffles_sentences(mimic):
    pairs = _pairs(mimic)
    a, b = pairs[3], pairs[3]
    assert torch.equal(a["image"], b["image"]) and a["sentences"] == b["sentences"]
    assert a["image"].shape == (3, 64, 64)
    pairs.epoch = 1
    c = pairs[3]
    assert not torch.equal(a["image"], c["image"])
    assert sorted(c["sentences"]) == sorted(pairs.sentences[3])
    orders = set()
    for epoch in range(8):
        pairs.epoch = epoch
        orders.add(tuple(pairs[3]["sentences"]))
    assert len(orders) > 1
    val = _pairs(mimic, augment=False, split="val")
    assert val[0]["sentences"] == val.sentences[0]


def test_sentence_feature_is_max_over_its_tokens(tokenizer):
    model = _model(get_method("lovt"), tokenizer).report.eval()
    items = [{"image": torch.zeros(3, 8, 8), "sentences": ["Heart size is normal.", "No pneumothorax."]}] * 2
    batch = PairCollator(tokenizer, 64)(items)
    with torch.no_grad():
        sentences, _, weights, _ = model(batch)
        tokens = model.bert(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    for k in range(2):
        expected = tokens[0][batch["sentence_index"][0] == k].max(0).values
        torch.testing.assert_close(sentences[0, k], expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


# ----------------------------------------------------------------------------------------------- methods
def test_registry_has_the_protocol_methods_and_rejects_bad_configs():
    for name in (
        "random",
        "imagenet",
        "convirt",
        "clip",
        "lovt",
        "uniformity_prior",
        "uniformity_prior_sw",
        "lovt_no_alignment",
        "lovt_no_uniformity",
        "lovt_alignment_prior",
        "global_attention",
        "global_avg",
        "clip_learned_tau",
    ):
        assert name in method_names()
    assert get_method("uniformity_prior").local_part is None and get_method("uniformity_prior").prior
    assert get_method("lovt_no_alignment").local_part == "uniformity"
    with pytest.raises(CxrbenchError, match="unknown method"):
        get_method("nope")
    with pytest.raises(CxrbenchError, match="unknown prior"):
        MethodConfig("bad", prior="nope")
    with pytest.raises(CxrbenchError, match="schedule must be one of"):
        MethodConfig("bad", schedule="linear")
    with pytest.raises(CxrbenchError, match="pooling must be one of"):
        MethodConfig("bad", pooling="max")  # max pooling is for the report side only
    with pytest.raises(CxrbenchError, match="already registered"):
        register_method("lovt", MethodConfig("lovt", pooling="avg"))
    custom = register_method("tmp_method", MethodConfig("tmp_method", pooling="avg"))
    assert get_method("tmp_method") is custom
    unregister_method("tmp_method")
    assert "tmp_method" not in method_names()


@pytest.mark.parametrize("name", TRAINED)
def test_every_method_runs_forward_and_backward(mimic, tokenizer, name):
    torch.manual_seed(0)
    config = get_method(name)
    model = _model(config, tokenizer).train()
    pairs = _pairs(mimic)
    batch = PairCollator(tokenizer, 64)([pairs[i] for i in range(4)])
    losses = method_loss(config, model(batch))
    assert torch.isfinite(losses["loss"])
    expected = (
        {"global"} | ({"local"} if config.local_part else set()) | ({"prior"} if config.prior else set())
    )
    assert expected <= set(losses)
    losses["loss"].backward()
    grads = [p.grad for p in model.image.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------- training
def test_pretraining_lowers_val_loss_and_exports_a_loadable_encoder(mimic, tmp_path):
    """Three tiny epochs: LoVT's local loss (through the learned cross-attention) goes down on the
    validation pairs; the global InfoNCE on 16 phantom pairs stays near chance (log 8) at this size."""
    profile = dataclasses.replace(TINY, max_epochs=3)
    result = pretrain("lovt", mimic, tmp_path, profile, device="cpu")
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert min(h["val"]["local"] for h in history[1:]) < history[0]["val"]["local"]
    assert all(np.isfinite(h["val_loss"]) for h in history)
    for name in ("encoder.safetensors", "encoder.pt"):
        loaded = load_encoder(tmp_path / name)
        assert loaded.report.arch == "resnet18" and loaded.report.fraction_loaded == 1.0
    state = torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=True)
    exported = load_encoder(tmp_path / "encoder.pt").encoder.state_dict()
    for key, value in state["best_encoder"].items():
        torch.testing.assert_close(exported[key], value)
    assert (tmp_path / "history.json").exists() and (tmp_path / "tokenizer" / "vocab.txt").exists()


def test_resume_continues_the_epoch_count(mimic, tmp_path):
    profile = dataclasses.replace(TINY, max_epochs=1)
    first = pretrain("convirt", mimic, tmp_path, profile, device="cpu")
    assert [h["epoch"] for h in first.history] == [0, 1]
    with pytest.raises(CxrbenchError, match="--resume"):
        pretrain("convirt", mimic, tmp_path, profile, device="cpu")
    with pytest.raises(CxrbenchError, match="not 'lovt'"):
        pretrain("lovt", mimic, tmp_path, profile, resume=True, device="cpu")
    second = pretrain("convirt", mimic, tmp_path, profile, resume=True, epochs=2, device="cpu")
    assert [h["epoch"] for h in second.history] == [0, 1, 2]
    assert second.history[1] == first.history[1]  # the finished epoch was kept, not retrained
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 2


def test_init_methods_export_without_training(mimic, tmp_path):
    result = pretrain("random", mimic, tmp_path, TINY)
    assert load_encoder(result.encoder_path).report.arch == "resnet18"
    assert not (tmp_path / CHECKPOINT).exists()


def test_missing_pretrained_report_encoder_is_a_clear_error(mimic, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CxrbenchError, match="cannot load the report encoder"):
        pretrain("convirt", mimic, tmp_path, TINY, bert=str(tmp_path / "no_such_bert"), device="cpu")


def test_cli_pretrain_command(mimic, tmp_path):
    app = typer.Typer()
    app.command("pretrain")(pretrain_command)
    app.command("noop")(lambda: None)
    ok = CliRunner().invoke(app, ["pretrain", "random", "--data", str(mimic), "--out", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "r" / "encoder.safetensors").exists()
    bad = CliRunner().invoke(app, ["pretrain", "nope", "--data", str(mimic), "--out", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "unknown method" in bad.output and "Traceback" not in bad.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_gloo_on_two_cpu_processes(mimic, tmp_path):
    import json

    import torch.multiprocessing as mp
    from toy_method import ddp_worker

    profile = dataclasses.replace(TINY, max_epochs=1, batch_size=4, max_train_images=16, max_val_images=8)
    mp.spawn(
        ddp_worker, args=(2, _free_port(), "lovt", str(mimic), str(tmp_path), profile), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["epochs"] for r in ranks] == [2, 2]
    record = json.loads((tmp_path / "history.json").read_text())
    assert record["world_size"] == 2 and record["finished"]
    assert load_encoder(tmp_path / "encoder.safetensors").report.fraction_loaded == 1.0


# ------------------------------------------------------------------------------------- adding a baseline
def test_toy_method_registered_from_a_test_module_runs_pretrain_then_evaluate(mimic, prepared_root, tmp_path):
    from toy_method import register_toy

    toy = register_toy()
    try:
        result = pretrain(
            toy.name, mimic, tmp_path / "toy", dataclasses.replace(TINY, max_epochs=1), device="cpu"
        )
        assert "extra" in result.history[-1]["val"]
        options = EvaluateOptions(prepared_root, tmp_path / "runs", toy.name, EVAL_FAST, seeds=1)
        outcome = evaluate_checkpoint(result.encoder_path, select_tasks("covid_linear"), options)[0]
        record = outcome.records[-1]
        assert record["status"] == "ok", record.get("error")
        assert (
            record["encoder_load"]["arch"] == "resnet18" and record["encoder_load"]["fraction_loaded"] == 1.0
        )
        assert 0.0 <= record["test"]["dice"] <= 1.0
    finally:
        unregister_method(toy.name)


@pytest.mark.slow
def test_pretrained_encoder_beats_random_on_a_demo_task(mimic, prepared_root, tmp_path):
    """LoVT in the demo profile (about 20-60 s) vs the seeded random init, frozen linear segmentation."""
    result = pretrain("lovt", mimic, tmp_path / "lovt", "demo", device="cpu")
    assert min(h["val_loss"] for h in result.history[1:]) < result.history[0]["val_loss"]
    evaluate = dataclasses.replace(EVAL_FAST, resolution=128, max_epochs=8, patience=8)
    tasks = select_tasks("covid_linear,rsna_seg_linear_10")
    scores = {}
    for name, spec in (("random", "random"), ("lovt", result.encoder_path)):
        options = EvaluateOptions(prepared_root, tmp_path / "runs", name, evaluate, seeds=1, arch="resnet18")
        for outcome in evaluate_checkpoint(spec, tasks, options):
            record = outcome.records[-1]
            assert record["status"] == "ok", record.get("error")
            scores[(name, outcome.task.task_id)] = record["test"]["dice"]
    gains = [scores[("lovt", t.task_id)] - scores[("random", t.task_id)] for t in tasks]
    assert np.isfinite(gains).all()
    assert max(gains) > 0.0, scores


def _prior_and_random_means(mimic, prepared_root, tmp_path, task_id: str, evaluate) -> dict[str, float]:
    """Mean test Dice (3 seeds) of `task_id` on a uniformity_prior encoder pre-trained in the demo
    profile and on the seeded random init."""
    result = pretrain("uniformity_prior", mimic, tmp_path / "up", "demo", device="cpu")
    assert min(h["val_loss"] for h in result.history[1:]) < result.history[0]["val_loss"]
    means = {}
    for name, spec in (("random", "random"), ("uniformity_prior", result.encoder_path)):
        options = EvaluateOptions(prepared_root, tmp_path / "runs", name, evaluate, seeds=3, arch="resnet18")
        (outcome,) = evaluate_checkpoint(spec, select_tasks(task_id), options)
        assert all(r["status"] == "ok" for r in outcome.records)
        means[name] = float(np.mean([r["test"]["dice"] for r in outcome.records]))
    return means


def test_uniformity_prior_encoder_beats_random_on_a_linear_probe(mimic, prepared_root, tmp_path):
    """The method this project is built around, pre-trained in the demo profile, gives a frozen linear
    probe of phantom COVID opacities a better Dice than the seeded random init (3 seeds each)."""
    evaluate = dataclasses.replace(EVAL_FAST, resolution=128, max_epochs=6, patience=6)
    means = _prior_and_random_means(mimic, prepared_root, tmp_path, "covid_linear", evaluate)
    assert means["uniformity_prior"] > means["random"] + 0.02, means


@pytest.mark.slow
def test_uniformity_prior_encoder_beats_random_on_a_frozen_unet(mimic, prepared_root, tmp_path):
    """The same with the reference ResUNet head, trained without the demo's U-Net caps (its image
    skip lets it find bright phantom lesions without the encoder, so the margin is the encoder's)."""
    evaluate = dataclasses.replace(EVAL_FAST, resolution=96, max_epochs=6, patience=6, head_caps=())
    means = _prior_and_random_means(mimic, prepared_root, tmp_path, "covid_unet_frozen", evaluate)
    assert means["uniformity_prior"] > means["random"] + 0.05, means


def test_cli_percent_selects_the_fixed_train_subset(mimic, tmp_path):
    import json

    app = typer.Typer()
    app.command("pretrain")(pretrain_command)
    app.command("noop")(lambda: None)
    args = [
        "pretrain",
        "convirt",
        "--data",
        str(mimic),
        "--epochs",
        "1",
        "--percent",
        "30",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c30")])
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "c30" / "history.json").read_text())
    assert history["profile"]["percent"] == 30


def test_offline_vocabulary_is_the_same_in_every_process(tmp_path):
    """Ties in word frequency must not be broken by hash order (it differed between processes)."""
    import subprocess

    from cxrbench.baselines.data import SPECIAL_TOKENS, offline_vocabulary

    texts = ["Small left effusion.", "Right effusion, small.", "No pneumothorax; left lung clear."]
    script = (
        "import sys, json; from cxrbench.baselines.data import offline_vocabulary; "
        f"print(json.dumps(offline_vocabulary({texts!r}, 60)))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2, 3)
    ]
    assert runs[0] == runs[1] == runs[2]
    vocab = offline_vocabulary(texts, 60)
    assert json.loads(runs[0]) == vocab and vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    chars = [t for t in vocab[len(SPECIAL_TOKENS) :] if len(t) == 1]
    assert vocab[len(SPECIAL_TOKENS) + len(chars) :][: len(chars)] == [f"##{c}" for c in chars]
    words = vocab[len(SPECIAL_TOKENS) + 2 * len(chars) :]
    assert words[:3] == ["effusion", "left", "small"]  # counts 2, 2, 2: alphabetical among ties
    assert "effusion" not in offline_vocabulary(texts, 10)  # the cap keeps specials and characters first


# ------------------------------------------------------------------------- reference configurations
def test_lovt_cross_attention_is_learned_and_ignores_padded_sentences():
    from cxrbench.baselines.models import CrossAttention

    torch.manual_seed(0)
    attention = CrossAttention(8).train()
    names = {n for n, _ in attention.named_parameters()}
    assert {"key.weight", "key.bias", "value.weight", "value.bias", "output.weight", "output.bias"} <= names
    assert {"norm.weight", "norm.bias"} <= names  # BatchNorm on the attended representations
    regions = torch.randn(3, 4, 8, requires_grad=True)
    sentences = torch.randn(3, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    attended_report, attended_image = attention(regions, sentences, None, mask)
    assert attended_report.shape == (3, 4, 8) and attended_image.shape == (3, 5, 8)
    assert (attended_image[~mask] == 0).all()  # padded sentences attend to nothing
    changed = sentences.clone()
    changed[~mask] = 100.0
    attention.eval()
    again = attention(regions, changed, None, mask)[0]
    torch.testing.assert_close(attention(regions, sentences, None, mask)[0][:2], again[:2])
    attended_report.sum().backward()
    assert attention.key.weight.grad.abs().sum() > 0 and attention.output.weight.grad.abs().sum() > 0


def test_lovt_trains_its_cross_attention_and_the_ablations_build_what_they_use(mimic, tokenizer):
    for name, has_attention in [("lovt", True), ("lovt_no_uniformity", True), ("lovt_no_alignment", False)]:
        model = _model(get_method(name), tokenizer)
        assert (model.attention is not None) == has_attention, name
    config = get_method("lovt")
    model = _model(config, tokenizer).train()
    batch = PairCollator(tokenizer, 64)([_pairs(mimic)[i] for i in range(4)])
    method_loss(config, model(batch))["loss"].backward()
    assert model.attention.value.weight.grad.abs().sum() > 0


def test_global_attention_is_uniformity_prior_without_the_prior():
    from transformers import BertConfig, BertModel

    from cxrbench.baselines.training import build_model

    control, prior = get_method("global_attention"), get_method("uniformity_prior")
    a, b = control.as_record(), prior.as_record()
    differing = {k for k in a if a[k] != b[k]}
    assert differing == {"name", "description", "prior", "prior_kwargs"}
    # one seed, the same initial weights for every module the two methods share
    models = []
    for config in (control, prior):
        torch.manual_seed(0)
        bert = BertModel(
            BertConfig(
                vocab_size=50,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
            ),
            add_pooling_layer=False,
        )
        models.append(build_model(config, TINY, bert).state_dict())
    shared = set(models[0]) & set(models[1])
    assert shared == set(models[0]) and len(shared) < len(models[1])  # the prior adds local projections
    for key in shared:
        torch.testing.assert_close(models[0][key], models[1][key], msg=key)


def test_convirt_and_clip_are_the_reference_configurations():
    from cxrbench.baselines.training import get_pretrain_profile, method_profile

    convirt, clip = get_method("convirt"), get_method("clip")
    assert (convirt.image_pooling, convirt.sentence_pooling, convirt.projection) == (
        "avg",
        "max",
        "mlp_nonorm",
    )
    assert (convirt.report_sentences, convirt.optimizer, convirt.schedule) == ("one", "adam", "plateau")
    assert (convirt.global_tau, convirt.weight_i2r, convirt.learnable_tau) == (0.1, 0.75, False)
    assert (convirt.plateau_patience, convirt.plateau_factor) == (12, 0.5)
    full = method_profile(convirt, get_pretrain_profile("full"))
    assert (full.lr, full.max_epochs, full.patience, full.accumulation, full.batch_size) == (
        1e-5,
        500,
        15,
        1,
        32,
    )
    assert (clip.image_pooling, clip.sentence_pooling, clip.projection) == ("attention", "max", "mlp")
    assert (clip.global_tau, clip.weight_i2r, clip.learnable_tau, clip.report_sentences) == (
        0.1,
        0.75,
        False,
        "one",
    )
    full = method_profile(clip, get_pretrain_profile("full"))
    assert (full.lr, full.max_epochs, full.patience, full.accumulation, clip.schedule) == (
        1e-4,
        100,
        10,
        16,
        "cosine_per_epoch",
    )
    demo = get_pretrain_profile("demo")
    assert method_profile(convirt, demo) == demo  # the demo keeps its short budget for every method


def test_convirt_report_feature_is_the_max_over_all_tokens(tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    ).eval()
    report = ReportModel(bert, get_method("convirt").sentence_pooling).eval()
    items = [
        {"image": torch.zeros(3, 8, 8), "sentences": ["small left effusion.", "no pneumothorax."]},
        {"image": torch.zeros(3, 8, 8), "sentences": ["clear."]},
    ]
    batch = PairCollator(tokenizer, 64)(items)
    _, pooled, _, _ = report(batch)
    tokens = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    for i in range(2):
        expected = tokens[i][batch["sentence_index"][i] >= 0].max(0).values
        torch.testing.assert_close(pooled[i], expected)


def test_one_random_sentence_per_report_when_the_method_asks(mimic):
    ds = open_prepared(mimic)
    split = ds.split("train")
    one = PretrainPairs(split, 64, ds.stats["mean"], ds.stats["std"], True, seed=0, sentences="one")
    picks = set()
    for epoch in range(6):
        one.epoch = epoch
        item = one[0]
        assert len(item["sentences"]) == 1 and item["sentences"][0] in one.sentences[0]
        picks.add(item["sentences"][0])
    assert len(picks) > 1 or len(one.sentences[0]) == 1
    again = PretrainPairs(split, 64, ds.stats["mean"], ds.stats["std"], True, seed=0, sentences="one")
    again.epoch = 5
    assert again[0]["sentences"] == one[0]["sentences"]  # seeded by (seed, epoch, index)
    val = PretrainPairs(ds.split("val"), 64, ds.stats["mean"], ds.stats["std"], False, sentences="one")
    assert val[0]["sentences"] == list(val.sentences[0])  # validation: the whole report


def test_schedules_follow_the_reference():
    from cxrbench.baselines.training import _step_lr

    clip, lovt, convirt = get_method("clip"), get_method("lovt"), get_method("convirt")
    # the reference's CosineAnnealingLR(T_max = steps per epoch), stepped every step, never reset
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=5)
    for step in range(23):
        assert _step_lr(clip, 1e-4, step, 5, 115) == pytest.approx(
            reference.param_groups[0]["lr"], rel=1e-6, abs=1e-12
        )
        reference.step()
        scheduler.step()
    assert lovt.schedule == clip.schedule
    assert _step_lr(convirt, 1e-5, 3, 5, 100) is None  # reduce-on-plateau acts per epoch


def test_same_seed_same_data_same_cpu_gives_the_same_encoder(mimic, tmp_path):
    """LoVT (learned cross-attention, BatchNorm everywhere) trained twice: identical bytes exported."""
    import hashlib

    profile = dataclasses.replace(TINY, max_epochs=1, max_train_images=16, max_val_images=8)
    digests, finals = [], []
    for run in ("a", "b"):
        result = pretrain("lovt", mimic, tmp_path / run, profile, device="cpu")
        digests.append(hashlib.sha256(result.encoder_path.read_bytes()).hexdigest())
        finals.append(torch.load(tmp_path / run / CHECKPOINT, weights_only=True)["model"])
    assert digests[0] == digests[1]
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_docs_baselines_table_states_the_code_s_settings():
    """docs/baselines.md: one row per registered method, our value of every setting as the code has it."""
    from cxrbench.baselines.settings import SETTINGS, method_settings

    text = (Path(__file__).parents[1] / "docs" / "baselines.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", *SETTINGS]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("`"):
            rows[cells[0].strip("`")] = [c.split(" [")[0] for c in cells[1:]]
    assert sorted(rows) == sorted(method_names())
    for name, ours in rows.items():
        assert dict(zip(SETTINGS, ours)) == method_settings(get_method(name)), name
    convirt_row = next(line for line in lines if line.startswith("| `convirt`"))
    assert "[ref:" not in convirt_row  # ConVIRT exactly as the reference configuration
