"""DenseNet, ConvNeXt and Swin behind the feature contract: tiny random models saved in each published
key layout (torchvision and torchxrayvision DenseNet, timm ConvNeXt and Swin, Hugging Face Swin as
MedCLIP ships it), loaded with auto-detection, run through `evaluate` on a linear, a U-Net and a YOLO
task; frozen means frozen; gradient checkpointing changes nothing but memory."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import types

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.encoders import (
    ConvNeXtConfig,
    DenseNetConfig,
    SwinConfig,
    create_encoder,
    list_encoders,
    load_encoder,
    register_convnext_variant,
    register_densenet_variant,
    register_swin_variant,
)
from cxrbench.encoders.presets import PRESETS, Preprocessing, resolve_preprocessing
from cxrbench.errors import CheckpointError, CxrbenchError
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import get_profile, select_tasks
from cxrbench.protocol.training import train_run

TINY = {
    "densenet_tiny": DenseNetConfig(3, 8, 4, (1, 2, 1, 1)),
    "xrv_densenet_tiny": DenseNetConfig(1, 8, 4, (1, 2, 1, 1)),
    "convnext_tiny_test": ConvNeXtConfig((1, 1, 2, 1), (8, 16, 24, 32)),
    "swin_tiny_test": SwinConfig(4, 8, (2, 1, 2, 1), (1, 2, 2, 4), 2, img_size=64),
}
# One epoch on a few images: every code path of a task, in seconds per family.
FAST = dataclasses.replace(
    get_profile("demo"),
    name="test",
    resolution=64,
    max_epochs=1,
    warmup_steps=1,
    default_seeds=1,
    max_train_images=8,
    max_eval_images=8,
)
TASKS = "rsna_seg_linear_10,covid_unet_finetune,rsna_yolo_frozen_10"  # linear, U-Net, YOLO


def _register_tiny() -> None:
    register = {
        DenseNetConfig: register_densenet_variant,
        ConvNeXtConfig: register_convnext_variant,
        SwinConfig: register_swin_variant,
    }
    for name, config in TINY.items():
        if name not in list_encoders():
            register[type(config)](name, config)


_register_tiny()


def _random(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_encoder(arch)


def _xrv_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """What torchxrayvision's DenseNet.state_dict() holds: features.*, an 18-way classifier, op_threshs."""
    state = dict(encoder.state_dict())
    width = encoder.feature_info.channels["conv5"]
    state["classifier.weight"] = torch.randn(18, width)
    state["classifier.bias"] = torch.zeros(18)
    state["op_threshs"] = torch.rand(18)
    return state


def _hf_swin(config: SwinConfig):
    from transformers import SwinConfig as HFSwinConfig
    from transformers import SwinModel

    torch.manual_seed(3)
    return SwinModel(
        HFSwinConfig(
            image_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=config.window_size,
        )
    ).eval()


def _transformers4_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers-5 SwinModel state dict under the transformers-4 names that published checkpoints
    (MedCLIP's) carry: attention.self.query/key/value, attention.output.dense, intermediate/output.dense."""
    renames = {
        ".attention.q_proj.": ".attention.self.query.",
        ".attention.k_proj.": ".attention.self.key.",
        ".attention.v_proj.": ".attention.self.value.",
        ".attention.o_proj.": ".attention.output.dense.",
        ".attention.relative_position_bias.relative_position_bias_table": ".attention.self.relative_position_bias_table",
        ".mlp.fc1.": ".intermediate.dense.",
        ".mlp.fc2.": ".output.dense.",
    }
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


@pytest.mark.parametrize(
    "arch", [*TINY, "densenet121", "xrv_densenet121", "convnext_tiny", "swin_tiny_patch4_window7_224"]
)
def test_feature_contract_shapes(arch):
    size = 64
    with torch.device("meta"):
        encoder = create_encoder(arch)
        feats = encoder(torch.empty(2, encoder.in_chans, size, size))
    info = encoder.feature_info
    assert list(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for stage, x in feats.items():
        assert x.shape == (2, info.channels[stage], size // info.strides[stage], size // info.strides[stage])


def test_densenet121_channels_and_torchvision_equivalence():
    with torch.device("meta"):
        info = create_encoder("densenet121").feature_info
    assert list(info.channels.values()) == [64, 256, 512, 1024, 1024]
    torch.manual_seed(0)
    tv = torchvision.models.DenseNet(4, (1, 2, 1, 1), 8).eval()
    encoder = create_encoder("densenet_tiny").eval()
    encoder.load_state_dict({k: v for k, v in tv.state_dict().items() if k.startswith("features.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x)["conv5"], torch.relu(tv.features(x)), atol=1e-6)


@pytest.mark.parametrize("arch", ["convnext_tiny_test", "swin_tiny_test"])
def test_timm_families_equal_timm_features(arch):
    """conv2..conv5 are exactly what timm's features_only / forward_intermediates give."""
    config = TINY[arch]
    encoder = _random(arch).eval()
    if isinstance(config, ConvNeXtConfig):
        net = ConvNeXt(depths=config.depths, dims=config.dims, num_classes=0)
    else:
        net = SwinTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            num_classes=0,
            strict_img_size=False,
        )
    missing, unexpected = net.load_state_dict(encoder.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("head.", "norm.")) for k in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net.eval().forward_intermediates(x, intermediates_only=True)
        feats = encoder(x)
    for stage, expected in zip(("conv2", "conv3", "conv4", "conv5"), ref):
        assert torch.allclose(feats[stage], expected, atol=1e-5), stage
    assert torch.allclose(
        feats["conv1"], nn.functional.interpolate(feats["conv2"], scale_factor=2, mode="bilinear")
    )


@pytest.mark.parametrize("names", ["transformers5", "transformers4"])
def test_huggingface_swin_loads_as_medclip_ships_it(tmp_path, names):
    """MedCLIP's vision tower: a HF SwinModel under `vision_model.model.`, beside a projection head."""
    config = TINY["swin_tiny_test"]
    hf = _hf_swin(config)
    state = dict(hf.state_dict())
    if names == "transformers4":
        state = _transformers4_names(state)
    full = {f"vision_model.model.{k}": v for k, v in state.items()}
    full["vision_model.projection_head.weight"] = torch.randn(16, 32)
    full["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    path = tmp_path / "medclip.bin"
    torch.save(full, path)
    loaded = load_encoder(path)
    report = loaded.report
    assert (report.arch, report.prefix, report.fraction_loaded) == (
        "swin_tiny_test",
        "vision_model.model.",
        1.0,
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        conv5 = loaded.encoder.eval()(x)["conv5"]
    expected = out.hidden_states[-1]  # the last stage before the final layernorm, B x HW x C
    assert torch.allclose(conv5.flatten(2).transpose(1, 2), expected, atol=1e-5)


def test_layouts_are_detected_with_prefixes(tmp_path):
    dense = _random("densenet_tiny")
    path = tmp_path / "tv_densenet.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in dense.state_dict().items()}}, path)
    assert load_encoder(path).report.arch == "densenet_tiny"
    # the oldest torchvision names ('norm.1'), as in the original model-zoo files
    old = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in dense.state_dict().items()
    }
    assert any("norm.1." in k for k in old)
    torch.save(old, path)
    loaded = load_encoder(path)
    assert loaded.report.fraction_loaded == 1.0
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in loaded.encoder.state_dict().items())

    convnext = _random("convnext_tiny_test")
    save_file({f"backbone.{k}": v for k, v in convnext.state_dict().items()}, str(tmp_path / "c.safetensors"))
    report = load_encoder(tmp_path / "c.safetensors").report
    assert (report.arch, report.prefix, report.fraction_loaded) == ("convnext_tiny_test", "backbone.", 1.0)

    swin = _random("swin_tiny_test")
    state = {**swin.state_dict(), "head.fc.weight": torch.zeros(5, 32), "norm.weight": torch.ones(32)}
    torch.save(state, tmp_path / "swin.pth")
    report = load_encoder(tmp_path / "swin.pth").report
    assert report.arch == "swin_tiny_test" and report.unexpected == ()
    partial = {k: v for k, v in state.items() if not k.startswith(("layers.2", "layers.3"))}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"a swin stem under prefix '', but not the blocks.*--arch"):
        load_encoder(tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"only \d+/\d+ .* swin_tiny_test"):
        load_encoder(tmp_path / "partial.pth", arch="swin_tiny_test")


def test_unknown_size_is_reported_not_guessed(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.DenseNet(4, (1, 1, 1, 1), 8)
    torch.save(net.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"densenet .*matches no known architecture.*densenet121"):
        load_encoder(tmp_path / "odd.pth")


def test_torchxrayvision_state_dict_and_whole_model_pickle(tmp_path, monkeypatch):
    xrv = _random("xrv_densenet_tiny")
    path = tmp_path / "xrv.pt"
    torch.save(_xrv_state(xrv), path)
    loaded = load_encoder(path)
    assert loaded.report.arch == "xrv_densenet_tiny" and loaded.report.unexpected == ()
    assert loaded.encoder.in_chans == 1
    preset = resolve_preprocessing(path, loaded.report.arch, 1)
    assert (preset.name, preset.in_chans, preset.low, preset.high) == ("xrv", 1, -1024.0, 1024.0)

    # torchxrayvision publishes whole pickled models: refused, with the one-line conversion.
    module = types.ModuleType("torchxrayvision")
    module.models = types.ModuleType("torchxrayvision.models")

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3))

    DenseNet.__module__, DenseNet.__qualname__ = "torchxrayvision.models", "DenseNet"
    module.models.DenseNet = DenseNet
    monkeypatch.setitem(sys.modules, "torchxrayvision", module)
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", module.models)
    pickled = tmp_path / "densenet121-res224-all.pt"
    torch.save(DenseNet(), pickled)
    with pytest.raises(CheckpointError) as info:
        load_encoder(pickled)
    message = str(info.value)
    assert "torchxrayvision environment" in message
    assert "import torch, torchxrayvision; torch.save(torch.load(" in message
    assert "weights_only=False).state_dict()" in message


def test_presets_values_and_resolution(tmp_path):
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    dataset = PRESETS["dataset"].apply(images, 0.5, 0.25)
    assert dataset.shape == (1, 3, 2, 2)
    assert torch.equal(dataset, ((images.float() / 255 - 0.5) / 0.25).unsqueeze(1).expand(-1, 3, -1, -1))
    xrv = PRESETS["xrv"].apply(images, 0.5, 0.25)
    assert xrv.shape == (1, 1, 2, 2) and xrv.min() == -1024 and xrv.max() == 1024
    imagenet = PRESETS["imagenet"].apply(images, 0.5, 0.25)
    assert imagenet[0, :, 0, 1].tolist() == pytest.approx(
        [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    assert PRESETS["dataset"].key is None and PRESETS["clip"].key != PRESETS["imagenet"].key

    # ResNets default to the dataset statistics; other families need the preset named.
    assert resolve_preprocessing(tmp_path / "r.pth", "resnet50", 3).name == "dataset"
    with pytest.raises(CheckpointError, match=r"--preset NAME, one of dataset, imagenet, clip, xrv"):
        resolve_preprocessing(tmp_path / "c.pth", "convnext_tiny", 3)
    assert resolve_preprocessing("random", "convnext_tiny", 3, builtin=True).name == "dataset"
    with pytest.raises(CxrbenchError, match="1-channel input but the densenet121 encoder takes 3"):
        resolve_preprocessing(tmp_path / "d.pth", "densenet121", 3, preset="xrv")

    # A Hugging Face model folder says it in preprocessor_config.json.
    folder = tmp_path / "rad-dino"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.53, 0.53, 0.53], "image_std": [0.26, 0.26, 0.26], "rescale_factor": 1 / 255}
        )
    )
    chosen = resolve_preprocessing(folder, "vit", 3)
    assert (chosen.name, chosen.mean, chosen.high) == (
        "hf-preprocessor",
        (0.53, 0.53, 0.53),
        pytest.approx(1.0),
    )
    assert resolve_preprocessing(folder, "vit", 3, preset="clip").name == "clip"  # the flag wins
    (folder / "preprocessor_config.json").write_text('{"image_mean": "x"}')
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: image_mean and image_std"):
        resolve_preprocessing(folder, "vit", 3)


def _frozen_data(prepared_root, task_id, preset: Preprocessing):
    task = FAST.apply(select_tasks(task_id)[0])
    dataset = open_task_dataset(prepared_root, task.dataset)
    data = {s: load_task_split(dataset, task, s, FAST) for s in ("train", "val", "test")}
    for split in data.values():
        split.preprocessing = preset
    return task, dataset, data


@pytest.mark.parametrize("arch", list(TINY))
def test_frozen_means_frozen(prepared_root, arch):
    encoder = _random(arch)
    before = copy.deepcopy(encoder.state_dict())
    preset = PRESETS["xrv" if encoder.in_chans == 1 else "imagenet"]
    for task_id in ("rsna_yolo_frozen_10", "covid_unet_frozen"):
        task, dataset, data = _frozen_data(prepared_root, task_id, preset)
        for cache in (True, False):
            train_run(
                task,
                encoder,
                len(dataset.classes),
                data,
                1e-2,
                0,
                FAST.resolution,
                torch.device("cpu"),
                use_feature_cache=cache,
            )
            after = encoder.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), (task_id, cache)


@pytest.mark.parametrize("arch", ["resnet18", *TINY])
def test_grad_checkpointing_gives_the_same_loss_gradients_and_buffers(arch):
    torch.manual_seed(0)
    plain = create_encoder(arch).train()
    checked = copy.deepcopy(plain)
    checked.set_grad_checkpointing(True)
    x = torch.randn(2, plain.in_chans, 64, 64)

    def step(encoder):
        feats = encoder(x)
        loss = sum((f**2).mean() for f in feats.values())
        loss.backward()
        return loss.detach()

    assert torch.allclose(step(plain), step(checked), rtol=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), checked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    for (name, a), (_, b) in zip(plain.named_buffers(), checked.named_buffers()):
        assert torch.equal(a, b), name


def _save_layout(tmp_path, layout: str):
    """(file, preset flag) of a tiny random encoder saved as its published files are."""
    if layout == "torchvision-densenet":
        path = tmp_path / "densenet.pth"
        torch.save(_random("densenet_tiny").state_dict(), path)
        return path, "imagenet"
    if layout == "torchxrayvision-densenet":
        path = tmp_path / "xrv.pt"
        torch.save(_xrv_state(_random("xrv_densenet_tiny")), path)
        return path, None  # the 1-channel stem says xrv
    if layout == "timm-convnext":
        path = tmp_path / "convnext.safetensors"
        state = {**_random("convnext_tiny_test").state_dict(), "head.fc.weight": torch.zeros(3, 32)}
        save_file(state, str(path))
        return path, "imagenet"
    if layout == "timm-swin":
        path = tmp_path / "swin.pth"
        torch.save({"model": _random("swin_tiny_test").state_dict()}, path)
        return path, "imagenet"
    path = tmp_path / "medclip_swin.bin"  # hf-swin
    state = _transformers4_names(dict(_hf_swin(TINY["swin_tiny_test"]).state_dict()))
    torch.save({f"vision_model.model.{k}": v for k, v in state.items()}, path)
    return path, "medclip"


LAYOUTS = ["torchvision-densenet", "torchxrayvision-densenet", "timm-convnext", "timm-swin", "hf-swin"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_through_evaluate_on_linear_unet_yolo(prepared_root, tmp_path, layout):
    path, preset = _save_layout(tmp_path, layout)
    options = EvaluateOptions(prepared_root, tmp_path / "runs", layout, FAST, seeds=1, preset=preset)
    outcomes = evaluate_checkpoint(path, select_tasks(TASKS), options)
    assert [o.task.head for o in outcomes] == ["yolo", "linear", "unet"]
    for outcome in outcomes:
        record = outcome.records[-1]
        assert record["status"] == "ok", record["error"]
        assert record["encoder_load"]["fraction_loaded"] == 1.0
        assert record["preprocessing"]["name"] == (preset or "xrv")
        assert record["encoder_parameters"] > 0 and record["head_parameters"] > 0
        assert record["peak_memory_bytes"] > 0 and record["train_images_per_s"] > 0


def test_cli_needs_a_preset_when_the_checkpoint_does_not_say(prepared_root, tmp_path):
    path, _ = _save_layout(tmp_path, "timm-convnext")
    runner = CliRunner()
    args = [
        "evaluate",
        str(path),
        "--data",
        str(prepared_root),
        "--profile",
        "demo",
        "--tasks",
        "covid_linear",
    ]
    result = runner.invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "--preset NAME, one of dataset, imagenet, clip" in " ".join(result.output.split())


def test_preset_is_part_of_the_run_key(prepared_root, tmp_path):
    options = dict(seeds=1, arch="resnet18")
    runs = tmp_path / "runs"
    tasks = select_tasks("covid_linear")
    first = evaluate_checkpoint("random", tasks, EvaluateOptions(prepared_root, runs, "r", FAST, **options))
    second = evaluate_checkpoint(
        "random",
        tasks,
        EvaluateOptions(prepared_root, tmp_path / "runs2", "r", FAST, preset="imagenet", **options),
    )
    a, b = first[0].records[-1], second[0].records[-1]
    assert a["run_key"] != b["run_key"] and a["protocol_hash"] == b["protocol_hash"]
    assert (a["preprocessing"]["name"], b["preprocessing"]["name"]) == ("dataset", "imagenet")
    assert a["grad_checkpointing"] is False

    from cxrbench.leaderboard.report import build_leaderboard

    board = build_leaderboard(
        runs,
        tmp_path / "board",
        n_boot=0,
        n_boot_detection=0,
        plots=False,
        overlays=False,
        include_published=False,
        cost=True,
    )
    assert "## Cost per encoder" in board.markdown
    assert (tmp_path / "board" / "cost.csv").read_text().splitlines()[1].startswith("r,11")


def test_cli_encoders_lists_families_presets_and_known_encoders():
    result = CliRunner().invoke(app, ["encoders", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert {"resnet", "densenet", "convnext", "swin"} <= set(listing["families"])
    assert "xrv_densenet121" in listing["families"]["densenet"]["architectures"]
    assert listing["presets"]["xrv"]["low"] == -1024.0 and listing["presets"]["xrv"]["in_chans"] == 1
    known = {e["name"]: e for e in listing["known_encoders"]}
    for name in ("RAD-DINO", "BiomedCLIP", "CheXzero", "MRM", "EVA-X", "BioViL", "GLoRIA", "ConVIRT"):
        assert known[name]["source"].startswith("https://")
    assert known["MedCLIP (Swin)"]["supported"] and known["torchxrayvision DenseNet-121"]["supported"]
    table = CliRunner().invoke(app, ["encoders"])
    assert table.exit_code == 0 and "known public encoders" in table.output


def test_cost_table_per_encoder_and_old_records():
    from cxrbench.leaderboard.cost import cost_table, render_cost_markdown

    def record(encoder, mode, head, speed, peak, params=1_000_000):
        return {
            "encoder": encoder,
            "phase": "final",
            "status": "ok",
            "task_settings": {"mode": mode, "head": head},
            "encoder_parameters": params,
            "head_parameters": 2048 if head == "linear" else 500_000,
            "peak_memory_bytes": peak,
            "peak_memory_source": "cpu_max_rss",
            "train_images_per_s": speed,
        }

    records = [
        record("a", "frozen", "linear", 100.0, 2 * 1024**3),
        record("a", "frozen", "unet", 300.0, 1024**3),
        record("a", "finetune", "unet", 10.0, 3 * 1024**3),
        {"encoder": "old", "phase": "final", "status": "ok", "task_settings": {"mode": "frozen"}},
        {**record("a", "finetune", "unet", 1.0, 9 * 1024**3), "phase": "lr_search"},
    ]
    table = cost_table(records).set_index("encoder")
    assert table.loc["a", "encoder_parameters"] == 1_000_000
    assert table.loc["a", "head_parameters"] == "linear 2048, unet 500000"
    assert table.loc["a", "peak_memory_gib"] == 3.0  # the lr-search run is not counted
    assert table.loc["a", "train_images_per_s_frozen"] == 200.0
    assert table.loc["a", "train_images_per_s_finetune"] == 10.0
    markdown = render_cost_markdown(cost_table(records))
    assert "| a | 1.0 | linear 0.00, unet 0.50 | 3.00 (cpu_max_rss) | 200.0 | 10.0 |" in markdown
    assert "| old | - | - | - | - | - |" in markdown
