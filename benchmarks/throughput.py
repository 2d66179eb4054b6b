"""Training and evaluation throughput of the papers' real-size backbones with random weights.

    .venv/bin/python benchmarks/throughput.py [--batch 64] [--steps 20] [--device auto]

For each of ViT-B/16 and ResNet-50 at 224 px: LoRA r=4 training steps (paper 1's targets) and
inference, on the device forgetlab would pick (bf16 autocast on CUDA, fp32 on CPU), with the images
already on the device. Prints a Markdown table. ``benchmarks/pipeline.py`` measures the same steps
against an actual run over image files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import compute_step, eval_compute  # noqa: E402

from forgetlab.runtime import resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        "| backbone | device | precision | batch | train img/s (LoRA r=4) | eval img/s |\n|---|---|---|---|---:|---:|"
    )
    for name in ("vit_base_patch16_224", "resnet50"):
        train = compute_step(name, device, args.batch, args.steps, precision, compile_=False)
        evaluation = eval_compute(name, device, args.batch, args.steps, precision)
        print(f"| {name} | {label} | {precision} | {args.batch} | {train:.1f} | {evaluation:.1f} |", flush=True)


if __name__ == "__main__":
    main()
