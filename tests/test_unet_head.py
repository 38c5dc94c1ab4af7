"""The U-Net head is the reference ResUNet: its parameter count, its shapes, that every skip (the
input image included) reaches the output, and that the training loop feeds it the input image with
and without the frozen-feature cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cxrbench.encoders import INPUT, STRIDES, FeatureInfo, ResNetEncoder
from cxrbench.protocol.heads import UNetHead, build_head, register_head, soft_dice_loss, unregister_head
from cxrbench.protocol.heads.unet import BRIDGE_WIDTH, UP_WIDTHS
from cxrbench.protocol.task_data import load_task_split, open_task_dataset
from cxrbench.protocol.tasks import PROFILES, TASKS_BY_ID
from cxrbench.protocol.training import train_run

SMALL = FeatureInfo({"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32}, dict(STRIDES))
SMALL_WIDTHS = {"bridge_width": 16, "up_widths": (16, 12, 8, 8, 8)}


def _features(size: int, batch: int = 2, info: FeatureInfo = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {
        s: torch.randn(batch, c, -(-size // info.strides[s]), -(-size // info.strides[s]), generator=g)
        for s, c in info.channels.items()
    }
    feats[INPUT] = torch.randn(batch, 3, size, size, generator=g)
    return feats


@pytest.mark.parametrize(("arch", "expected"), [("resnet50", 124_300_609), ("resnet18", 86_699_329)])
def test_parameter_count_is_the_reference_resunet(arch, expected):
    """With one output class, convolution biases included (the architecture description's count)."""
    with torch.device("meta"):  # no memory, no initialisation: only the shapes are counted
        encoder = ResNetEncoder(arch)
        head = build_head("unet", encoder.feature_info, n_classes=1, image_size=224)
    assert isinstance(head, UNetHead)
    assert sum(p.numel() for p in head.parameters()) == expected
    # Widths stay the reference's whatever the encoder; only the skips' channels follow it.
    assert [m.out_channels for m in head.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == list(
        UP_WIDTHS
    )
    assert head.bridge[0][0].out_channels == BRIDGE_WIDTH == 2048
    assert head.bridge[0][0].in_channels == encoder.feature_info.channels["conv5"]
    assert head.up_blocks[-1].convs[0][0].in_channels == UP_WIDTHS[-1] + 3  # the input image's channels


def test_shapes_and_gradients():
    head = UNetHead(SMALL, n_classes=2, **SMALL_WIDTHS)
    feats = _features(64)
    out = head(feats, (64, 64))
    assert out.shape == (2, 2, 64, 64)
    assert head(feats).shape == (2, 2, 64, 64)  # default: the input image's size
    assert head(feats, (32, 40)).shape == (2, 2, 32, 40)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    # A size that is not a multiple of 32 (ResNet grids round up): the output still has it.
    odd = _features(100)
    odd[INPUT] = odd[INPUT][..., :90]
    for s, stride in STRIDES.items():
        odd[s] = odd[s][..., : -(-90 // stride)]
    assert head(odd).shape == (2, 2, 100, 90)


def test_missing_input_image_is_a_clear_error():
    head = UNetHead(SMALL, n_classes=1, **SMALL_WIDTHS)
    feats = _features(64)
    del feats[INPUT]
    with pytest.raises(Exception, match="input image"):
        head(feats)


def _trained_head() -> tuple[UNetHead, dict[str, torch.Tensor]]:
    """A small-width ResUNet trained a few steps on one batch (so batch norm has running statistics
    and the weights are not the initial ones), in eval mode."""
    torch.manual_seed(0)
    head = UNetHead(SMALL, n_classes=1, **SMALL_WIDTHS)
    feats = _features(64, batch=4)
    target = feats[INPUT][:, :1] > 0.5
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(5):
        loss = soft_dice_loss(head(feats), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval(), feats


def test_every_skip_reaches_the_output():
    head, feats = _trained_head()
    with torch.no_grad():
        base = head(feats)
        # One pixel of the input image: the output changes at that pixel, at full resolution, and
        # only within the reach of the last up-block's two 3x3 convolutions (so it enters there).
        y, x = 30, 17
        poked = dict(feats, **{INPUT: feats[INPUT].clone()})
        poked[INPUT][:, :, y, x] += 5.0
        change = (head(poked) - base).abs()[:, 0]
        assert (change[:, y, x] > 0).all()
        reach = torch.zeros_like(change, dtype=torch.bool)
        reach[:, y - 2 : y + 3, x - 2 : x + 3] = True
        assert change[~reach].max() == 0
        # Every encoder stage: perturbing it changes the output too (an unused one leaves it
        # bit-identical; deeper stages pass more layers, so their effect is smaller but not zero).
        for stage in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            poked = dict(feats, **{stage: feats[stage] + torch.randn_like(feats[stage])})
            assert (head(poked) - base).abs().max() > 0, stage


def test_training_loop_feeds_the_input_image_with_and_without_the_cache(prepared_root):
    """A frozen U-Net task with cached features still sees the image, with the same result as uncached."""

    class TinyUNet(UNetHead):
        name = "tiny_unet"
        seen: list[set[str]] = []

        @classmethod
        def build(cls, feature_info, n_classes, image_size):
            return cls(feature_info, n_classes, **SMALL_WIDTHS)

        def forward(self, features, out_size=None):
            assert features[INPUT].shape[-2:] == tuple(out_size)
            self.seen.append(set(features))
            return super().forward(features, out_size)

    register_head(TinyUNet)
    try:
        profile = dataclasses.replace(
            PROFILES["demo"], name="test", resolution=64, max_epochs=2, max_train_images=8, max_eval_images=6
        )
        task = dataclasses.replace(profile.apply(TASKS_BY_ID["covid_unet_frozen"]), head="tiny_unet")
        dataset = open_task_dataset(prepared_root, task.dataset)
        data = {s: load_task_split(dataset, task, s, profile) for s in ("train", "val", "test")}
        results = {}
        for use_cache in (True, False):
            torch.manual_seed(0)
            results[use_cache] = train_run(
                task,
                ResNetEncoder("resnet18"),
                1,
                data,
                1e-3,
                0,
                64,
                torch.device("cpu"),
                use_feature_cache=use_cache,
            )
            assert results[use_cache].used_feature_cache is use_cache
        assert all(keys == {"conv1", "conv2", "conv3", "conv4", "conv5", INPUT} for keys in TinyUNet.seen)
        cached, direct = results[True], results[False]
        tiny = TinyUNet(ResNetEncoder("resnet18").feature_info, 1, **SMALL_WIDTHS)
        assert (
            cached.cost["head_parameters"]
            == direct.cost["head_parameters"]
            == sum(p.numel() for p in tiny.parameters())
        )
        for key in ("intersection", "pred_sum", "gt_sum"):
            assert cached.test_per_image[key] == direct.test_per_image[key]
        np.testing.assert_allclose(
            [h["val_loss"] for h in cached.history], [h["val_loss"] for h in direct.history], rtol=1e-4
        )
    finally:
        unregister_head("tiny_unet")
