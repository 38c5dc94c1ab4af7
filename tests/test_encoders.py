"""Encoders: the registry, feature shapes, seeded random init, and loading of the checkpoint layouts
users actually have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from cxrbench.encoders import (
    ARCHS,
    BUILTIN_ENCODERS,
    IMAGENET_ENV,
    FeatureInfo,
    ResNetEncoder,
    create_encoder,
    detect_arch,
    format_load_report,
    is_builtin,
    list_encoders,
    load_encoder,
    register_encoder,
)
from cxrbench.encoders import registry as encoder_registry
from cxrbench.errors import CheckpointError, CxrbenchError


class NotATensor:
    """Anything that weights_only unpickling must refuse."""

    def __init__(self) -> None:
        self.payload = "arbitrary code could run here"


@pytest.fixture(scope="module")
def tv18() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _same_weights(encoder: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> bool:
    own = encoder.state_dict()
    return all(
        torch.equal(v, state[prefix + k]) for k, v in own.items() if not k.endswith("num_batches_tracked")
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_shapes_strides_and_channels(arch):
    with torch.device("meta"):  # shape-only forward: every arch in milliseconds
        encoder = ResNetEncoder(arch)
        feats = encoder(torch.empty(2, 3, 96, 128))
    info = encoder.feature_info
    assert list(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for stage, x in feats.items():
        assert x.shape == (2, info.channels[stage], 96 // info.strides[stage], 128 // info.strides[stage])
    assert info.channels["conv5"] == (512 if arch in ("resnet18", "resnet34") else 2048)


def test_real_forward_resnet50_224_matches_torchvision():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    encoder = ResNetEncoder("resnet50").eval()
    assert set(encoder.state_dict()) == {k for k in tv.state_dict() if not k.startswith("fc.")}
    encoder.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = encoder(x)
        stem = tv.relu(tv.bn1(tv.conv1(x)))
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(stem)))))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "conv1": (112, 112),
        "conv2": (56, 56),
        "conv3": (28, 28),
        "conv4": (14, 14),
        "conv5": (7, 7),
    }
    assert torch.allclose(feats["conv1"], stem) and torch.allclose(feats["conv5"], ref)


def test_unknown_arch_is_a_user_error():
    with pytest.raises(CxrbenchError, match="resnet50"):
        ResNetEncoder("vit_b16")


@pytest.mark.parametrize("arch", ARCHS)
def test_detect_arch_from_keys(arch):
    with torch.device("meta"):
        state = ResNetEncoder(arch).state_dict()
    assert detect_arch(state) == arch


def test_torchvision_state_dict_round_trip(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18, path)
    loaded = load_encoder(path)
    report = loaded.report
    assert (report.arch, report.prefix, report.fraction_loaded) == ("resnet18", "", 1.0)
    assert report.n_loaded == report.n_total and not report.missing and not report.unexpected  # fc.* ignored
    assert report.sha256 is not None and len(report.sha256) == 64 and report.path == str(path)
    assert _same_weights(loaded.encoder, tv18)
    text = format_load_report(report)
    assert "resnet18" in text and "100.0%" in text


def test_lightning_checkpoints_prefix_auto_detected(tmp_path, tv18):
    text_encoder = {
        "model_b.text.embeddings.weight": torch.zeros(10, 4),
        "model_b.proj.weight": torch.zeros(4, 4),
    }
    state = {f"model_a.encoder.{k}": v for k, v in tv18.items()}
    ckpt = {"epoch": 3, "state_dict": {**text_encoder, **state}, "optimizer_states": [{"state": {}}]}
    path = tmp_path / "lovt.ckpt"
    torch.save(ckpt, path)
    loaded = load_encoder(path)
    assert loaded.report.prefix == "model_a.encoder." and loaded.report.fraction_loaded == 1.0
    assert _same_weights(loaded.encoder, state, "model_a.encoder.")

    # MoCo/LoVT style: a query and a momentum encoder fit equally well; the first one in the file wins.
    torch.manual_seed(1)
    other = torchvision.models.resnet18().state_dict()
    both = {**{f"img_encoder_q.model.{k}": v for k, v in tv18.items()}}
    both.update({f"img_encoder_k.model.{k}": v for k, v in other.items()})
    torch.save({"state_dict": both}, path)
    loaded = load_encoder(path)
    assert loaded.report.prefix == "img_encoder_q.model."
    assert loaded.report.alternatives == ("img_encoder_k.model.",)
    assert "img_encoder_k.model." in format_load_report(loaded.report)
    assert _same_weights(loaded.encoder, tv18)

    explicit = load_encoder(path, prefix="img_encoder_k.model.")
    assert explicit.report.prefix == "img_encoder_k.model." and _same_weights(explicit.encoder, other)


@pytest.mark.parametrize("wrapper", ["model", "encoder", "model_state", "module"])
def test_wrapped_state_dicts(tmp_path, tv18, wrapper):
    if wrapper == "module":  # DistributedDataParallel
        obj = {f"module.{k}": v for k, v in tv18.items()}
    else:
        obj = {wrapper: dict(tv18), "step": 10}
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    loaded = load_encoder(path)
    assert loaded.report.fraction_loaded == 1.0
    assert loaded.report.prefix == ("module." if wrapper == "module" else "")


def test_timm_resnet_state_dict(tmp_path):
    model = timm.create_model("resnet18", pretrained=False)
    state = model.state_dict()
    assert {k for k in state if not k.startswith("fc.")} == set(ResNetEncoder("resnet18").state_dict())
    path = tmp_path / "timm.pth"
    torch.save(state, path)
    loaded = load_encoder(path)
    assert loaded.report.arch == "resnet18" and loaded.report.fraction_loaded == 1.0
    assert _same_weights(loaded.encoder, state)


def test_safetensors(tmp_path, tv18):
    path = tmp_path / "enc.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in tv18.items()}, str(path))
    loaded = load_encoder(path)
    assert loaded.report.prefix == "backbone." and loaded.report.fraction_loaded == 1.0
    assert _same_weights(loaded.encoder, tv18)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_encoder(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "config": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_encoder(path)


def test_truncated_and_missing_files(tmp_path, tv18):
    path = tmp_path / "full.pth"
    torch.save(tv18, path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_encoder(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_encoder(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope.pth")


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="dict of tensors"):
        load_encoder(path)


def _changed(state: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**state, key: value}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: _changed(s, "conv1.weight", torch.full_like(s["conv1.weight"], float("nan"))), "NaN/inf"),
        (lambda s: _changed(s, "layer1.0.bn1.running_var", torch.full((64,), float("inf"))), "NaN/inf"),
        (lambda s: {k: (v * 100).to(torch.int32) for k, v in s.items()}, "dtype int32"),
        (lambda s: {k: v.to(torch.complex64) for k, v in s.items()}, "dtype complex64"),
        (lambda s: {k: v > 0 for k, v in s.items()}, "dtype bool"),
        (lambda s: {k: torch.empty(v.shape, device="meta") for k, v in s.items()}, "meta tensor"),
    ],
    ids=["nan", "inf-buffer", "int", "complex", "bool", "meta"],
)
def test_tensors_that_cannot_be_weights_are_refused(tmp_path, tv18, make, message):
    """Cast silently (ints, bools, complex), NaN/inf (every run fails an epoch later) or without data:
    one CheckpointError naming the file and a tensor, before any run."""
    path = tmp_path / "enc.pt"
    torch.save(make(tv18), path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_encoder(path)
    text = str(err.value)
    assert text.startswith(str(path)) and ("conv1.weight" in text or "running_var" in text)


def test_nan_weights_in_safetensors_are_refused(tmp_path, tv18):
    path = tmp_path / "enc.safetensors"
    bad = _changed(tv18, "fc.weight", tv18["fc.weight"])  # the classifier is ignored, the body is not
    bad["layer4.1.conv2.weight"] = torch.full_like(tv18["layer4.1.conv2.weight"], float("nan"))
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    with pytest.raises(
        CheckpointError, match=r"NaN/inf value\(s\) in 1 backbone tensor\(s\) \(layer4\.1\.conv2"
    ):
        load_encoder(path)


def test_a_safetensors_file_under_a_pt_name_is_read_as_safetensors(tmp_path, tv18):
    path = tmp_path / "enc.pt"
    save_file({k: v.contiguous() for k, v in tv18.items()}, str(path))
    loaded = load_encoder(path)
    assert loaded.report.fraction_loaded == 1.0 and _same_weights(loaded.encoder, tv18)


def test_a_dict_that_contains_itself_is_an_error_not_a_recursion(tmp_path):
    outer: dict = {"epoch": 3}
    outer["state_dict"] = outer
    path = tmp_path / "loop.pt"
    torch.save(outer, path)
    with pytest.raises(CheckpointError, match="no tensors found"):
        load_encoder(path)


def test_foreign_checkpoints_are_refused(tmp_path, tv18):
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    path = tmp_path / "mlp.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(CheckpointError, match="loaded 0%"):
        load_encoder(path)

    # A ResNet stem but most of the body gone (e.g. a different network sharing key names).
    partial = {k: v for k, v in tv18.items() if not k.startswith(("layer3", "layer4"))}
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r"only \d+/\d+ .* prefix ''.*missing e\.g\. layer"):
        load_encoder(path, arch="resnet18")


def test_explicit_arch_mismatch_is_refused(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18, path)
    with pytest.raises(CheckpointError, match="resnet50 backbone"):
        load_encoder(path, arch="resnet50")


def test_random_init(tmp_path):
    a = load_encoder("random", arch="resnet18", seed=3)
    b = load_encoder("random", arch="resnet18", seed=3)
    assert a.report.source == "random" and a.report.sha256 is None and a.report.n_loaded == 0
    assert torch.equal(a.encoder.conv1.weight, b.encoder.conv1.weight)
    assert "random" in format_load_report(a.report)


def test_imagenet_absent_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError, match=r"ResNet50_Weights\.IMAGENET1K_V1") as err:
        load_encoder("imagenet")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value) and IMAGENET_ENV in str(
        err.value
    )


def test_imagenet_found_in_hub_cache_and_env(tmp_path, monkeypatch, tv18):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(tv18, cache / "resnet18-f37072fd.pth")
    loaded = load_encoder("imagenet", arch="resnet18")
    assert loaded.report.source == "imagenet" and loaded.report.path == str(cache / "resnet18-f37072fd.pth")
    assert _same_weights(loaded.encoder, tv18)

    monkeypatch.setenv(IMAGENET_ENV, str(cache / "resnet18-f37072fd.pth"))
    assert load_encoder("imagenet", arch="resnet18").report.fraction_loaded == 1.0
    monkeypatch.setenv(IMAGENET_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="not a file"):
        load_encoder("imagenet")


def test_foreign_bytes_are_a_checkpoint_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_encoder(path)


def test_registry_lists_and_builds_every_resnet():
    assert (
        list_encoders()[: len(ARCHS)]
        == ARCHS
        == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    )
    with torch.device("meta"):
        encoder = create_encoder("resnet34")
    assert isinstance(encoder, ResNetEncoder) and encoder.arch == "resnet34"


def test_unknown_registry_name_lists_the_valid_ones():
    with pytest.raises(
        CxrbenchError, match=r"unknown encoder architecture 'vit_b16'; choose one of resnet18, "
    ):
        create_encoder("vit_b16")
    with pytest.raises(CxrbenchError, match="choose one of resnet18"):
        load_encoder("random", arch="vit_b16")


def test_registered_family_is_loadable_by_name(monkeypatch, tmp_path, tv18):
    """A new family is a decorated builder: load_encoder then builds it (here: a resnet18 under a new name)."""
    monkeypatch.setattr(encoder_registry, "_BUILDERS", dict(encoder_registry._BUILDERS))

    @register_encoder
    def tiny_resnet() -> ResNetEncoder:
        return ResNetEncoder("resnet18")

    assert "tiny_resnet" in list_encoders()
    path = tmp_path / "tv.pth"
    torch.save(tv18, path)
    loaded = load_encoder(path, arch="tiny_resnet")
    assert loaded.report.arch == "tiny_resnet" and loaded.report.fraction_loaded == 1.0
    assert _same_weights(loaded.encoder, tv18)
    with pytest.raises(CxrbenchError, match="registered twice"):
        register_encoder(tiny_resnet)


def test_random_weights_are_seeded_by_the_loader_and_unchanged():
    """The default seed reproduces what callers got by seeding torch with 0 before building the encoder."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = load_encoder("random").encoder.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    b = load_encoder("random").encoder.state_dict()
    torch.manual_seed(0)
    reference = ResNetEncoder("resnet50").state_dict()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], reference[k]) for k in reference)
    other = load_encoder("random", seed=1).encoder.state_dict()
    assert not torch.equal(other["conv1.weight"], a["conv1.weight"])


def test_tensors_a_checkpoint_lacks_are_seeded(tmp_path, tv18):
    partial = {k: v for k, v in tv18.items() if k != "layer4.1.conv2.weight"}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    torch.manual_seed(99)
    loaded = load_encoder(path, seed=4)
    assert loaded.report.missing == ("layer4.1.conv2.weight",)
    torch.manual_seed(4)
    reference = ResNetEncoder("resnet18")
    assert torch.equal(loaded.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(loaded.encoder.conv1.weight, tv18["conv1.weight"])


def test_builtin_names():
    assert BUILTIN_ENCODERS == ("random", "imagenet")
    assert is_builtin("random") and is_builtin("imagenet") and is_builtin(Path("imagenet"))
    assert not is_builtin("random.pt") and not is_builtin("runs/random/encoder.safetensors")


def test_builtin_names_are_spelled_once():
    """("random", "imagenet") lives in encoders/load.py only; every other module asks is_builtin."""
    root = Path(__file__).resolve().parents[1] / "cxrbench"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "encoders" / "load.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and {
                getattr(e, "value", None) for e in node.elts
            } == set(BUILTIN_ENCODERS):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders


def test_feature_info_needs_one_width_per_stage():
    info = FeatureInfo.from_channels([64, 256, 512, 1024, 2048])
    assert info.strides == {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}
    with pytest.raises(ValueError, match="5 channel widths"):
        FeatureInfo.from_channels([64, 128])
