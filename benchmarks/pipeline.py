"""The real-data path, side by side in one process: what the device can do against what a
run gets, on the current device.

    .venv/bin/python benchmarks/pipeline.py [--device auto] [--scale full|small] [--out DIR]

It writes real-layout synthetic data (ImageNet-sized JPEGs in wnid folders, CIFAR-100's pickles) and
measures, with the papers' backbones at random weights:

1. the compute-only LoRA training step (images already on the device), eager and compiled, at each
   precision a preset can use (fp32, tf32, bf16), at batch 128 (paper 2) and 32 (paper 1);
2. the end-to-end training rate of an actual ``forgetlab run`` over the JPEG files (both pipelines);
3. evaluation over JPEG files against the eval compute-only rate;
4. the k-NN vote for a bank of 1.28 M x 768 and 50,000 queries (``--scale small``: 128 K and 5,000);
5. a second run's k-NN bank reuse (the first computes it, the second reads it from disk).

Prints one Markdown table of rates and ratios (the README holds it). ``--scale small`` shrinks the
sizes for a CPU, where this takes about ten minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import atexit
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from forgetlab import config as config_module
from forgetlab.evaluate import knn_predict_many
from forgetlab.methods import build_method
from forgetlab.models.backbones import create
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runtime import autocast, resolve_device
from forgetlab.train import make_optimizer, trainable_parameters

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_data(root: Path, images: int, size: tuple[int, int]) -> None:
    """ImageNet-layout JPEGs (train and val, wnid folders) of textured content, and CIFAR-100 pickles."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    for split in ("train", "val"):
        for i in range(images):
            wnid = WNIDS[i % len(WNIDS)]
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            phase = rng.uniform(0, 6, 3)
            texture = np.stack([127 + 90 * np.sin(x / (5 + c) + phase[c]) * np.cos(y / (7 + c)) for c in range(3)], -1)
            texture += rng.normal(0, 12, texture.shape)
            Image.fromarray(texture.clip(0, 255).astype(np.uint8)).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    cifar = root / "cifar-100-python"
    cifar.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", images), ("test", images // 4)):
        data = {
            "data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
            "fine_labels": [i % 100 for i in range(count)],
        }
        (cifar / split).write_bytes(pickle.dumps(data, protocol=2))
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))


def compute_step(name: str, device, batch: int, steps: int, precision: str, mode: str) -> float:
    """Training images per second with the images already on the device; ``mode``: eager, compiled,
    or reduce-overhead (compiled with CUDA graphs)."""
    compile_ = mode != "eager"
    torch.manual_seed(0)
    model = MultiHeadModel(create(name, num_classes=1000))
    head = model.add_head("task", 100)
    build_method(config_module.method_config_from_dict({"name": "lora", "rank": 4})).prepare(model, "task")
    head.requires_grad_(True)
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    amp = torch.bfloat16 if precision == "bf16" else None
    optimizer = make_optimizer(trainable_parameters(model), config_module.TrainConfig(), device)
    forward = (
        (torch.compile(model, mode="reduce-overhead") if mode == "reduce-overhead" else torch.compile(model))
        if compile_
        else model
    )
    images, labels = torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 100, (batch,), device=device)
    model.train()
    warmup = 3 if compile_ else 2
    for step in range(steps + warmup):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, amp):
            loss = F.cross_entropy(forward(images, ["task"])["task"].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def eval_compute(name: str, device, batch: int, steps: int, precision: str) -> float:
    model = MultiHeadModel(create(name, num_classes=1000)).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, device=device)
    amp = torch.bfloat16 if precision == "bf16" else None
    with torch.no_grad():
        for step in range(steps + 2):
            if step == 2:
                _sync(device)
                start = time.perf_counter()
            with autocast(device, amp):
                model(images, ["upstream"])
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def actual_run(
    root: Path,
    out: Path,
    pipeline: str,
    device,
    precision: str,
    steps: int,
    batch: int,
    knn: bool = False,
    name: str = "run",
    extra: tuple[str, ...] = (),
):
    """A real ``forgetlab run`` (random-init ViT-B/16, LoRA r=4, ImageNet files upstream, CIFAR-100):
    its training images/s and upstream evaluation images/s, from the run's own records."""
    from forgetlab.runner import run

    overrides = [
        f"data.root={root}",
        "backbone.name=vit_base_patch16_224",
        "backbone.random_init=true",
        "backbone.num_classes=4",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        f"data.pipeline={pipeline}",
        f"device={device.type}",
        f"precision={precision}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        "train.select=last",
        f"data.workers={min(8, os.cpu_count() or 1)}",
        f"out_dir={out}",
        f"name={name}",
        "method.name=lora",
        "method.rank=4",
        "eval.batch_size=128",
        "train.optimizer=sgd",
        "train.lr=0.01",
    ]
    if knn:
        overrides += ["eval.upstream_evaluator=knn", "eval.knn_k=20", "backbone.num_classes=0"]
    overrides += list(extra)
    folder = run(config_module.resolve({}, overrides), log=lambda message: None)
    task = folder.read_tasks()[0]
    upstream = folder.read_upstream_eval()
    # The pretrained row's evaluation: the one whose k-NN bank a second run with the same weights reuses.
    return (
        task["images_per_second"],
        upstream[-1]["images"] / max(upstream[-1]["seconds"], 1e-9),
        upstream[0]["seconds"],
    )


def knn_vote(device, bank_size: int, queries: int, dim: int = 768) -> float:
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(bank_size, dim, device=device), dim=-1)
    labels = torch.randint(0, 1000, (bank_size,), device=device)
    query = F.normalize(torch.randn(queries, dim, device=device), dim=-1)
    knn_predict_many(bank, labels, query[:64], ks=(10, 20, 100, 200), temperature=0.07, num_classes=1000)  # warm-up
    _sync(device)
    start = time.perf_counter()
    knn_predict_many(bank, labels, query, ks=(10, 20, 100, 200), temperature=0.07, num_classes=1000, chunk=4096)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--out", default=None, help="folder for the synthetic data and runs (default: a temporary one)")
    parser.add_argument("--parts", default="compute,run,knn,reuse", help="which measurements: compute, run, knn, reuse")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    device = resolve_device(args.device)
    small = args.scale == "small"
    out = Path(args.out or tempfile.mkdtemp(prefix="forgetlab-pipeline-"))
    if not args.out:  # gigabytes of JPEGs at full scale
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    os.environ.setdefault("FORGETLAB_HOME", str(out / "home"))
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = []

    def row(what: str, value: float, unit: str, note: str = "") -> None:
        rows.append((what, value, unit, note))
        print(f"  {what}: {value:,.1f} {unit} {note}", flush=True)

    images = 64 if small else 2048
    write_data(out / "data", images, (375, 500))  # ImageNet's typical 500 x 375
    steps, batch = (3, 16) if small else (30, 128)
    precisions = ["fp32"] if device.type == "cpu" else ["fp32", "tf32", "bf16"]
    compiled_rate = {}
    for precision in precisions if "compute" in parts else []:
        for mode in ["eager"] if device.type == "cpu" else ["eager", "compiled"]:
            rate = compute_step("vit_base_patch16_224", device, batch, steps, precision, mode)
            compiled_rate[precision] = rate
            row(f"compute-only training, ViT-B/16 LoRA r=4, batch {batch}, {precision}, {mode}", rate, "img/s")
        if device.type == "cuda":  # paper 1's batch: what CUDA graphs add
            for mode in ("eager", "compiled", "reduce-overhead"):
                row(
                    f"compute-only training, batch 32, {precision}, {mode}",
                    compute_step("vit_base_patch16_224", device, 32, steps, precision, mode),
                    "img/s",
                )
    best_precision = precisions[-1]
    if "run" in parts:
        eval_rate = eval_compute("vit_base_patch16_224", device, 64 if small else 256, steps, best_precision)
        row(f"compute-only evaluation, ViT-B/16, {best_precision}", eval_rate, "img/s")
    for pipeline in ("pil", "device") if "run" in parts else ():
        train, evaluation, _ = actual_run(
            out / "data", out / "runs", pipeline, device, best_precision, steps * 2, batch, name=f"run-{pipeline}"
        )
        reference = compiled_rate.get(best_precision)
        row(
            f"actual run, training over CIFAR-100, pipeline={pipeline}",
            train,
            "img/s",
            f"({train / reference:.2f} x the compute-only rate)" if reference else "",
        )
        row(
            f"actual run, upstream evaluation over JPEG files, pipeline={pipeline}",
            evaluation,
            "img/s",
            f"({evaluation / eval_rate:.2f} x the compute-only rate)",
        )
    if "run" in parts and device.type == "cuda":  # paper 1's batch 32 in an actual run, with CUDA graphs
        train, _, _ = actual_run(
            out / "data",
            out / "runs",
            "device",
            device,
            best_precision,
            steps * 4,
            32,
            name="run-graphs",
            extra=("train.compile=reduce-overhead",),
        )
        row("actual run, training over CIFAR-100, batch 32, train.compile=reduce-overhead", train, "img/s")
    bank, queries = (128_000, 5_000) if small else (1_281_167, 50_000)
    if "knn" in parts:
        row(
            f"k-NN vote, bank {bank:,} x 768, {queries:,} queries, k = 10, 20, 100, 200",
            knn_vote(device, bank, queries),
            "s",
        )
    if "reuse" in parts:
        _, _, first = actual_run(
            out / "data", out / "runs", "auto", device, best_precision, 1, batch, knn=True, name="knn-first"
        )
        _, _, second = actual_run(
            out / "data", out / "runs", "auto", device, best_precision, 1, batch, knn=True, name="knn-second"
        )
        banks = len(list((Path(os.environ["FORGETLAB_HOME"]) / "knn-banks").glob("*.safetensors")))
        row(
            f"k-NN upstream evaluation of the pretrained row ({images} bank + {images} query JPEGs), first run",
            first,
            "s",
            "(computes the bank)",
        )
        row(
            "the same, a second run with the same weights", second, "s", f"(reads the bank; {banks} bank files on disk)"
        )
    print(f"\n{label}, torch {torch.__version__}, {images} JPEGs of 500 x 375\n")
    print("| what | value | unit | note |\n|---|---:|---|---|")
    for what, value, unit, note in rows:
        print(f"| {what} | {value:,.1f} | {unit} | {note} |")


if __name__ == "__main__":
    main()
