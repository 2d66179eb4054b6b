"""Training and evaluation throughput of the papers' real-size backbones with random weights.

    .venv/bin/python benchmarks/throughput.py [--batch 64] [--steps 20] [--device auto]

For each of ViT-B/16 and ResNet-50 at 224 px: LoRA r=4 training steps (paper 1's targets) and
inference, on the device forgetlab would pick (bf16 autocast and channels-last ResNets on CUDA,
fp32 on CPU). Prints a Markdown table. Meant for a GPU; on a CPU use a small --batch and --steps.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from forgetlab import config as config_module
from forgetlab.methods.base import build_method
from forgetlab.models.backbones import create
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runtime import autocast, autocast_dtype, resolve_device
from forgetlab.train import make_optimizer, trainable_parameters


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, device, batch: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = MultiHeadModel(create(name, num_classes=1000))
    head = model.add_head("task", 100)
    build_method(config_module.method_config_from_dict({"name": "lora", "rank": 4})).prepare(model, "task")
    head.requires_grad_(True)
    model = model.to(device)
    if device.type == "cuda" and "resnet" in name:
        model = model.to(memory_format=torch.channels_last)
    amp = autocast_dtype(device, "auto")
    optimizer = make_optimizer(trainable_parameters(model), config_module.TrainConfig())
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    model.train()
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            _sync(device)
            start = time.perf_counter()
        with autocast(device, amp):
            loss = F.cross_entropy(model(images, ["task"])["task"].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    train = batch * steps / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        for step in range(steps + 2):
            if step == 2:
                _sync(device)
                start = time.perf_counter()
            with autocast(device, amp):
                model(images, ["upstream"])
    _sync(device)
    return train, batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print("| backbone | device | precision | batch | train img/s (LoRA r=4) | eval img/s |\n|---|---|---|---|---:|---:|")
    for name in ("vit_base_patch16_224", "resnet50"):
        train, evaluation = measure(name, device, args.batch, args.steps)
        precision = "bf16 autocast" if autocast_dtype(device, "auto") else "fp32"
        print(f"| {name} | {label} | {precision} | {args.batch} | {train:.1f} | {evaluation:.1f} |", flush=True)


if __name__ == "__main__":
    main()
