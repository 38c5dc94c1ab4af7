"""ViT encoders: the published key layouts (timm, Lightning, open_clip, OpenAI CLIP, Hugging Face DINOv2)
built tiny and saved as the real files are saved, the simple feature pyramid, and the protocol on them.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import pytest
import timm.models.vision_transformer as tvit
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from cxrbench.cli.app import app
from cxrbench.encoders import (
    ViTEncoder,
    build_neck,
    create_encoder,
    list_encoders,
    load_encoder,
    neck_feature_info,
)
from cxrbench.encoders.features import INPUT
from cxrbench.encoders.pyramid import PROBE_STAGE
from cxrbench.encoders.vit import ARCHS, tap_blocks
from cxrbench.errors import CheckpointError
from cxrbench.protocol.heads import get_head
from cxrbench.protocol.heads.with_neck import build_head_with_neck
from cxrbench.protocol.runner import EvaluateOptions, evaluate_checkpoint
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import TASKS_BY_ID, get_profile, select_tasks
from cxrbench.protocol.training import train_run

WIDTH, DEPTH = 64, 2
TINY = dataclasses.replace(
    get_profile("demo"),
    name="vit-test",
    resolution=64,
    max_epochs=1,
    warmup_steps=1,
    batch_size=8,
    default_seeds=1,
    max_train_images=8,
    max_eval_images=8,
)
# One linear, one U-Net and one YOLO task (the YOLO one fine-tunes, so the encoder trains there).
TASK_IDS = ("rsna_seg_linear_10", "covid_unet_frozen", "rsna_yolo_finetune_1")


def _timm_vit(patch: int = 16, grid: int = 4, **kw) -> tvit.VisionTransformer:
    torch.manual_seed(7)
    kw = {"num_classes": 3, "dynamic_img_size": True} | kw
    model = tvit.VisionTransformer(
        img_size=grid * patch, patch_size=patch, embed_dim=WIDTH, depth=DEPTH, num_heads=1, **kw
    )
    return model.eval()


def _clip_vit() -> tvit.VisionTransformer:
    """The timm form of an OpenAI CLIP vision tower: pre-norm, QuickGELU, LayerNorm eps 1e-5."""
    return _timm_vit(
        num_classes=0,
        pre_norm=True,
        act_layer="quick_gelu",
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
    )


def _to_openai_clip(model: tvit.VisionTransformer) -> dict[str, torch.Tensor]:
    """A whole CLIP state dict as OpenAI's code names it: visual tower, text tower, projections."""
    sd = model.state_dict()
    out = {
        "visual.conv1.weight": sd["patch_embed.proj.weight"],
        "visual.class_embedding": sd["cls_token"][0, 0],
        "visual.positional_embedding": sd["pos_embed"][0],
        "visual.ln_pre.weight": sd["norm_pre.weight"],
        "visual.ln_pre.bias": sd["norm_pre.bias"],
        "visual.ln_post.weight": sd["norm.weight"],
        "visual.ln_post.bias": sd["norm.bias"],
        "visual.proj": torch.randn(WIDTH, 32),
    }
    ours_to_clip = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for key, value in sd.items():
        if not key.startswith("blocks."):
            continue
        _, index, rest = key.split(".", 2)
        for ours, clip in ours_to_clip.items():
            if rest.startswith(ours):
                rest = clip + rest[len(ours) :]
                break
        out[f"visual.transformer.resblocks.{index}.{rest}"] = value
    text = {
        "token_embedding.weight": torch.randn(100, 32),
        "positional_embedding": torch.randn(16, 32),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
        "transformer.resblocks.0.ln_1.weight": torch.ones(32),
        "ln_final.weight": torch.ones(32),
        "text_projection": torch.randn(32, 32),
        "logit_scale": torch.tensor(4.6),
    }
    return out | text


def _hf_dinov2(folder: Path, patch: int = 14, registers: int = 0) -> nn.Module:
    """A tiny Hugging Face Dinov2Model (or WithRegisters) saved with save_pretrained."""
    import transformers

    kw = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=2, patch_size=patch)
    kw |= dict(image_size=4 * patch, mlp_ratio=4)
    torch.manual_seed(3)
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    model.save_pretrained(folder)
    return model.eval()


def _write_layout(layout: str, folder: Path) -> Path:
    """A tiny ViT saved as the published files of `layout` are saved."""
    if layout == "timm_safetensors":
        path = folder / "vit.safetensors"
        save_file({k: v.contiguous() for k, v in _timm_vit().state_dict().items()}, str(path))
    elif layout == "lightning":
        path = folder / "epoch=3.ckpt"
        state = {f"model.backbone.{k}": v for k, v in _timm_vit(patch=14).state_dict().items()}
        state["model.projector.weight"] = torch.randn(8, WIDTH)
        torch.save(
            {"state_dict": state, "epoch": 3, "global_step": 40, "hyper_parameters": {"lr": 1e-3}}, path
        )
    elif layout == "open_clip":
        path = folder / "open_clip_pytorch_model.bin"
        trunk = {k: v for k, v in _timm_vit().state_dict().items() if not k.startswith("head.")}
        state = {f"visual.trunk.{k}": v for k, v in trunk.items()}
        state |= {"visual.head.proj.weight": torch.randn(32, WIDTH), "logit_scale": torch.tensor(4.6)}
        state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(100, 32)
        torch.save(state, path)
    elif layout == "openai_clip":
        path = folder / "clip.pt"
        torch.save(_to_openai_clip(_clip_vit()), path)
    elif layout == "hf_dinov2":
        path = folder / "rad-dino-tiny"
        _hf_dinov2(path)
    else:
        raise AssertionError(layout)
    return path


LAYOUTS = ("timm_safetensors", "lightning", "open_clip", "openai_clip", "hf_dinov2")
EXPECTED = {
    "timm_safetensors": ("vit_w64_d2_h1_patch16", "", "imagenet"),
    "lightning": ("vit_w64_d2_h1_patch14", "model.backbone.", "imagenet"),
    "open_clip": (
        "vit_w64_d2_h1_patch16",
        "visual.trunk.",
        "clip",
    ),  # open_clip towers (BiomedCLIP) use CLIP statistics
    "openai_clip": ("vit_w64_d2_h1_patch16", "visual.", "clip"),
    "hf_dinov2": ("vit_w64_d2_h2_patch14", "", "imagenet"),
}


def _timm_grids(model: tvit.VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(x, indices=[0, 1], norm=True, intermediates_only=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_detected_and_loads_completely(tmp_path, layout):
    path = _write_layout(layout, tmp_path)
    loaded = load_encoder(path)
    arch, prefix, preset = EXPECTED[layout]
    report = loaded.report
    assert (report.arch, report.prefix, loaded.encoder.default_preset) == (arch, prefix, preset)
    assert report.fraction_loaded == 1.0 and report.missing == () and report.unexpected == ()
    assert isinstance(loaded.encoder, ViTEncoder)
    again = load_encoder(path, arch=report.arch, prefix=report.prefix)  # what `evaluate` passes on
    assert again.report.arch == arch and again.report.sha256 == report.sha256


def test_one_channel_vit_reads_the_grey_image(tmp_path):
    model = _timm_vit(in_chans=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "grey.safetensors"))
    encoder = load_encoder(tmp_path / "grey.safetensors").encoder.eval()
    assert encoder.config.in_chans == 1
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(grey.repeat(1, 3, 1, 1))["block1"], _timm_grids(model, grey)[1])


@pytest.mark.parametrize("size", [64, 128])
def test_timm_and_open_clip_forward_equals_timm(tmp_path, size):
    """The same tensors as timm's own forward_intermediates (at 128 px: positional grid 4 -> 8)."""
    model = _timm_vit()
    x = torch.randn(2, 3, size, size)
    expected = _timm_grids(model, x)
    for layout in ("timm_safetensors", "open_clip"):
        encoder = load_encoder(_write_layout(layout, tmp_path)).encoder.eval()
        with torch.no_grad():
            got = encoder(x)
        torch.testing.assert_close(got["block0"], expected[0])
        torch.testing.assert_close(got["block1"], expected[1])


def test_openai_clip_forward_equals_the_timm_clip_tower(tmp_path):
    model = _clip_vit()
    path = tmp_path / "clip.pt"
    torch.save(_to_openai_clip(model), path)
    encoder = load_encoder(path).encoder.eval()
    assert encoder.config.pre_norm and encoder.config.act == "quick_gelu" and encoder.config.norm_eps == 1e-5
    x = torch.randn(2, 3, 64, 64)
    expected = _timm_grids(model, x)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)["block1"], expected[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 7}, "num_attention_heads 7 does not fit the weights"),
        ({"num_attention_heads": "two"}, "num_attention_heads 'two'"),
        ({"layer_norm_eps": "small"}, "layer_norm_eps 'small'"),
    ],
)
def test_a_hf_config_that_does_not_fit_its_weights_is_a_checkpoint_error(tmp_path, change, message):
    """A config.json of another model size (or a hand-edited one) beside the weights: one message
    naming config.json, not an AssertionError/ValueError from building the network."""
    _hf_dinov2(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=message) as err:
        load_encoder(tmp_path / "hf")
    assert str(config_path) in str(err.value)


@pytest.mark.parametrize("registers", [0, 2])
def test_hf_dinov2_folder_forward_equals_transformers(tmp_path, registers):
    """Our timm mapping of a Dinov2Model folder gives transformers' own last hidden state."""
    model = _hf_dinov2(tmp_path / "hf", registers=registers)
    loaded = load_encoder(tmp_path / "hf")
    assert loaded.report.path == str(tmp_path / "hf" / "model.safetensors")
    assert loaded.report.fraction_loaded == 1.0 and loaded.report.unexpected == ()
    assert loaded.encoder.config.registers == registers and loaded.encoder.config.layer_scale
    x = torch.randn(2, 3, 56, 56)  # the checkpoint's own 4 x 4 grid of 14-px patches
    with torch.no_grad():
        hidden = model(pixel_values=x).last_hidden_state[:, 1 + registers :]
        ours = loaded.encoder.eval()(x)["block1"]
    grid = hidden.reshape(2, 4, 4, WIDTH).permute(0, 3, 1, 2)
    # patch 14: the 4 x 4 grid is resized to the nominal stride 16 (56 px -> 3 x 3)
    expected = F.interpolate(grid, size=(3, 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("size", [224, 128])
def test_pyramid_shapes(patch, size):
    encoder = create_encoder(f"vit_w{WIDTH}_d4_h1_patch{patch}").eval()
    assert encoder.taps == (0, 1, 2, 3)
    info = neck_feature_info(encoder)
    neck = build_neck(encoder, ("conv1", "conv2", "conv3", "conv4", "conv5", PROBE_STAGE))
    with torch.no_grad():
        raw = encoder(torch.randn(1, 3, size, size))
        out = neck(raw)
    assert set(raw) == {"block0", "block1", "block2", "block3"}
    for stage, fmap in out.items():
        side = size // info.strides[stage]
        assert fmap.shape == (1, info.channels[stage], side, side), stage
    assert info.strides == {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32, PROBE_STAGE: 16}
    assert info.channels["conv1"] == WIDTH // 4 and info.probe == PROBE_STAGE
    assert torch.equal(out["conv4"], raw["block2"]) and torch.equal(out[PROBE_STAGE], raw["block3"])


def test_tapped_blocks():
    assert tap_blocks(12) == (3, 5, 7, 11)
    assert tap_blocks(24) == (5, 11, 17, 23)
    assert tap_blocks(32) == (7, 15, 23, 31)
    assert tap_blocks(2) == (0, 0, 1, 1)


def test_named_vits_are_registered_and_build():
    assert set(ARCHS) <= set(list_encoders())
    with torch.device("meta"):
        b16, b14 = create_encoder("vit_base_patch16"), create_encoder("vit_base_patch14")
    assert (b16.config.width, b16.config.depth, b16.config.heads, b16.config.patch) == (768, 12, 12, 16)
    assert b14.config.patch == 14 and b14.taps == (3, 5, 7, 11)
    a = load_encoder("random", arch="vit_w64_d2_h1_patch16").encoder.state_dict()
    b = load_encoder("random", arch="vit_w64_d2_h1_patch16").encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_neck_belongs_to_the_head():
    """The pyramid's parameters are the head's; the linear probe reads only the last block, unpooled."""
    vit = create_encoder(f"vit_w{WIDTH}_d{DEPTH}_h1_patch16")
    unet = build_head_with_neck(get_head("unet"), vit, 1, 64)
    neck_params = sum(p.numel() for p in unet.neck.parameters())
    assert neck_params > 0
    assert sum(p.numel() for p in unet.parameters()) == neck_params + sum(
        p.numel() for p in unet.head.parameters()
    )
    assert unet.required_stages == ("block0", "block1", INPUT)  # the image skip bypasses the neck
    linear = build_head_with_neck(get_head("linear"), vit, 1, 64)
    assert linear.required_stages == ("block1",) and not list(linear.neck.parameters())
    assert linear.head.required_stages == (PROBE_STAGE,) and linear.classifier is linear.head.classifier
    yolo = build_head_with_neck(get_head("yolo"), vit, 1, 64)
    assert not hasattr(yolo.neck, "to_stride4") and hasattr(yolo.neck, "to_stride8")
    resnet = create_encoder("resnet18")
    plain = build_head_with_neck(get_head("unet"), resnet, 1, 64)
    assert not list(plain.neck.parameters()) and plain.required_stages == plain.head.required_stages


def _train(prepared_root, encoder, task_id, use_cache):
    profile = dataclasses.replace(TINY, max_epochs=2, max_train_images=16, head_caps=())
    task = profile.apply(TASKS_BY_ID[task_id])
    ds = open_task_dataset(prepared_root, task.dataset)
    data = {s: load_task_split(ds, task, s, profile) for s in ("train", "val", "test")}
    return train_run(
        task,
        encoder,
        len(ds.classes),
        data,
        task.default_lr,
        0,
        profile.resolution,
        torch.device("cpu"),
        use_feature_cache=use_cache,
    )


def test_frozen_vit_stays_frozen_and_cache_changes_nothing(prepared_root, tmp_path):
    encoder = load_encoder(_write_layout("hf_dinov2", tmp_path)).encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cached = _train(prepared_root, encoder, "covid_unet_frozen", use_cache=True)
    direct = _train(prepared_root, encoder, "covid_unet_frozen", use_cache=False)
    assert cached.used_feature_cache and not direct.used_feature_cache
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for key in ("intersection", "pred_sum", "gt_sum"):
        assert cached.test_per_image[key] == direct.test_per_image[key]
    torch.testing.assert_close(
        torch.tensor([h["val_loss"] for h in cached.history]),
        torch.tensor([h["val_loss"] for h in direct.history]),
        rtol=1e-4,
        atol=1e-6,
    )
    assert cached.history[-1]["train_loss"] != cached.history[0]["train_loss"]  # the head (and neck) learn


# The timm-keyed layouts share one code path after loading: the default run keeps the two layouts
# that are converted (OpenAI CLIP; HF DINOv2 with patch 14), `make test-all` runs all five.
PROTOCOL_LAYOUTS = [
    layout if layout in ("openai_clip", "hf_dinov2") else pytest.param(layout, marks=pytest.mark.slow)
    for layout in LAYOUTS
]


@pytest.mark.parametrize("layout", PROTOCOL_LAYOUTS)
def test_every_layout_runs_the_protocol(prepared_root, tmp_path, layout):
    path = _write_layout(layout, tmp_path)
    options = EvaluateOptions(prepared_root, tmp_path / "runs", layout, TINY, seeds=1)
    tasks = [t for task_id in TASK_IDS for t in select_tasks(task_id)]
    outcomes = evaluate_checkpoint(path, tasks, options)
    for outcome in outcomes:
        (record,) = outcome.records
        assert record["status"] == "ok", (outcome.task.task_id, record.get("error"))
        assert record["encoder_load"]["arch"] == EXPECTED[layout][0]
        assert record["feature_cache"] is (outcome.task.mode == "frozen")


def test_cli_evaluates_a_hugging_face_folder(prepared_root, tmp_path):
    folder = _write_layout("hf_dinov2", tmp_path)
    runs = tmp_path / "runs"
    args = ["evaluate", str(folder), "--data", str(prepared_root), "--tasks", "covid_linear"]
    result = CliRunner().invoke(app, [*args, "--profile", "demo", "--seeds", "1", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert "vit_w64_d2_h2_patch14" in result.output
    (record_path,) = (runs / "rad-dino-tiny" / "covid_linear").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["checkpoint"]["sha256"]


def test_load_errors_are_clear(tmp_path):
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_encoder(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert' is not supported"):
        load_encoder(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_encoder(empty)
    resnet = tmp_path / "resnet.pth"
    torch.save(create_encoder("resnet18").state_dict(), resnet)
    with pytest.raises(CheckpointError, match="no ViT found"):
        load_encoder(resnet, arch="vit_base_patch16")
    half = {k: v for k, v in _timm_vit().state_dict().items() if not k.startswith("blocks.1.")}
    save_file({k: v.contiguous() for k, v in half.items()}, str(tmp_path / "half.safetensors"))
    with pytest.raises(CheckpointError, match=r"only \d+/\d+ .* vit_w64_d2_h1_patch16 .*ViT checkpoint"):
        load_encoder(tmp_path / "half.safetensors", arch="vit_w64_d2_h1_patch16")


def test_analysis_reads_a_vits_last_block(prepared_root, tmp_path):
    from cxrbench.analysis.records import analyze_encoder

    path = _write_layout("openai_clip", tmp_path)
    record = analyze_encoder(path, prepared_root / "covid_rural", n_images=4, resolution=64)
    assert record["features"] | {"temperature": None} == {
        "stage": "block1",
        "grid": [4, 4],
        "channels": WIDTH,
        "temperature": None,
    }


def test_other_families_sharing_the_anchor_keys_are_not_vits(tmp_path):
    """timm's Swin has a `patch_embed.proj.weight` too, HF's ViT and Swin the HF patch embedding."""
    import timm
    import transformers

    from cxrbench.encoders.vit_layouts import choose_vit

    with torch.device("meta"):
        swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
        hf_vit = transformers.ViTModel(
            transformers.ViTConfig(hidden_size=64, num_hidden_layers=1)
        ).state_dict()
    assert choose_vit(swin, tmp_path) is None
    assert choose_vit(hf_vit, tmp_path) is None


def test_gradient_checkpointing_gives_the_same_gradients():
    """timm's set_grad_checkpointing works through the tapped forward (for fine-tuning large ViTs)."""
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        encoder = create_encoder(f"vit_w{WIDTH}_d{DEPTH}_h1_patch16").train()
        encoder.set_grad_checkpointing(enabled)
        out = encoder(torch.ones(1, 3, 64, 64))
        sum(v.square().sum() for v in out.values()).backward()
        grads.append(encoder.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
