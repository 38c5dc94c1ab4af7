"""Cost of the encoder families at the protocol resolution: forward and training images/s, peak memory.

Random weights; each model runs in its own subprocess so that the CPU peak (the process's max RSS)
belongs to that model alone (on CUDA: max allocated memory). Forward: eval mode, no grad. Training:
train mode, a sum-of-squares loss over the five feature maps, backward and an Adam step (what a
fine-tune task does per batch, without the head). Figures are printed, never asserted.

Models: ResNet-50, DenseNet-121, Swin-T (cxrbench's own families) and ViT-B/16, ViT-B/14 (timm's
VisionTransformer directly, last block's tokens as the feature: the ViT family is not on this branch).

Usage: python benchmarks/bench_encoders.py [--resolution 224] [--batch 8] [--steps 3] [--device auto]
       [--models resnet50,densenet121,swin_t,vit_b16,vit_b14] [--grad-checkpointing] [--no-amp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from torch import nn

MODELS = ("resnet50", "densenet121", "swin_t", "vit_b16", "vit_b14")


class TimmViT(nn.Module):
    """A timm ViT-B whose forward returns its last block's patch tokens as one feature map."""

    def __init__(self, patch: int, resolution: int):
        super().__init__()
        import timm

        name = "vit_base_patch16_224" if patch == 16 else "vit_base_patch14_dinov2"
        self.net = timm.create_model(name, pretrained=False, num_classes=0, img_size=resolution)
        self.in_chans = 3

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.net.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": self.net.forward_features(x)}


def build(name: str, resolution: int) -> nn.Module:
    from cxrbench.encoders import create_encoder

    if name == "vit_b16":
        return TimmViT(16, resolution)
    if name == "vit_b14":
        return TimmViT(14, resolution)
    return create_encoder({"swin_t": "swin_tiny_patch4_window7_224"}.get(name, name))


def peak_bytes(device: torch.device) -> tuple[int, str]:
    from cxrbench.protocol.cost import peak_memory

    value, source = peak_memory(device)
    return int(value or 0), str(source)


def measure(name: str, resolution: int, batch: int, steps: int, device: str, amp: bool, ckpt: bool) -> dict:
    from cxrbench.runtime import autocast_factory, resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build(name, resolution).to(dev)
    autocast = autocast_factory(dev, amp)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, model.in_chans, resolution, resolution, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.eval()
    with torch.no_grad():
        with autocast():
            model(x)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with autocast():
                model(x)
        sync()
        forward = batch * steps / (time.perf_counter() - start)
    forward_peak = peak_bytes(dev)[0]

    model.train()
    if ckpt:
        model.set_grad_checkpointing(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step() -> None:
        with autocast():
            loss = sum(f.float().pow(2).mean() for f in model(x).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocates Adam state)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    training = batch * steps / (time.perf_counter() - start)
    peak, source = peak_bytes(dev)
    return {
        "model": name,
        "parameters_m": params / 1e6,
        "forward_images_per_s": forward,
        "train_images_per_s": training,
        "peak_forward_gib": forward_peak / 1024**3,
        "peak_gib": peak / 1024**3,
        "peak_source": source,
        "device": str(dev),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        result = measure(
            args.one,
            args.resolution,
            args.batch,
            args.steps,
            args.device,
            not args.no_amp,
            args.grad_checkpointing,
        )
        print(json.dumps(result))
        return
    print(
        f"encoders at {args.resolution} px, batch {args.batch}, {args.steps} timed steps after one warm-up, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'model':<12} {'params (M)':>10} {'fwd img/s':>10} {'train img/s':>12} {'peak fwd GiB':>12} {'peak GiB':>9}  source"
    )
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--resolution", str(args.resolution)]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device]
        cmd += ["--grad-checkpointing"] if args.grad_checkpointing else []
        cmd += ["--no-amp"] if args.no_amp else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(
                f"{name:<12} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{name:<12} {r['parameters_m']:>10.1f} {r['forward_images_per_s']:>10.2f} "
            f"{r['train_images_per_s']:>12.2f} {r['peak_forward_gib']:>12.2f} {r['peak_gib']:>9.2f}  {r['peak_source']}"
        )
    print(
        "CPU peaks are each subprocess's max RSS (model, activations, Adam state and the Python/torch runtime)."
    )


if __name__ == "__main__":
    main()
