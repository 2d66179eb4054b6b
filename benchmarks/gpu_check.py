"""The GPU check: every row of the GPU table, measured side by side in one process.

    PYTHONPATH=src python benchmarks/gpu_check.py [--small] [--out DIR] [--device auto]

Needs torch, torchvision and timm only (no venv). It writes its own synthetic data in the real layouts
(ImageNet-sized JPEGs in wnid folders, CIFAR-100's pickles, a CUB_200_2011 folder with boxes), then runs
its parts in order of importance, printing each result as a row of one Markdown table as soon as it is
known (progress goes to stderr), so a run cut off by the machine's time still reports:

1. references: compiled compute-only training (batch 128 bf16 and tf32; batch 32 fp32 with CUDA graphs)
   and evaluation (batch 256 bf16) rates, which the ratios below divide by;
2. an actual run at batch 128 bf16 with timm's training transform (random-resized crop, flip, colour
   jitter 0.4) over CIFAR-100 arrays, steady state (tasks.json's ``steady_images_per_second``);
3. ``--preset paper2-lora-r4`` (tf32, squash, no jitter; k-NN upstream) in steady state, twice: the
   second run must read the k-NN bank from disk (``knn-banks/`` files) on the device pipeline;
4. upstream evaluation over JPEG files: first pass (computes the evaluation-crop cache) and a later
   pass (reads it), against the compute-only evaluation rate;
5. a JPEG batch holding one CMYK JPEG: how many images the one-by-one decoder took;
6. ``--preset paper1-vit`` (batch 32, fp32, ``train.compile=auto``) over the CUB folder, steady state;
7. the remaining compute-only rows (eager rates) and the k-NN vote over a 1.28 M x 768 bank.

It is meant to finish in under 8 minutes on one H100/H200. ``--small`` shrinks everything (timm's tiny
``test_vit`` at 32 px, a few dozen images, a 32 K bank) so the same code runs on a CPU in a few minutes (3 min 40 s on the 2 shared cores);
its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
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


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Table:
    """One Markdown table, printed a row at a time."""

    def __init__(self):
        print("| what | measured | reference | ratio |\n|---|---:|---:|---:|", flush=True)

    def row(self, what: str, value, unit: str, reference: float | None = None) -> None:
        measured = f"{value:,} {unit}" if isinstance(value, int) else f"{value:,.1f} {unit}" if isinstance(value, float) else str(value)
        ratio = f"{value / reference:.2f} x" if isinstance(value, (int, float)) and reference else ""
        print(f"| {what} | {measured} | {f'{reference:,.0f} {unit}' if reference else ''} | {ratio} |", flush=True)


# ----------------------------------------------------------------------------------------------- data
def write_data(root: Path, images: int, size: tuple[int, int]) -> None:
    """ImageNet (wnid folders, train and val), CIFAR-100 pickles and a CUB_200_2011 folder."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]

    def jpeg(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6, 3)
        texture = np.stack([127 + 90 * np.sin(x / (5 + c) + phase[c]) * np.cos(y / (7 + c)) for c in range(3)], -1)
        Image.fromarray((texture + rng.normal(0, 12, texture.shape)).clip(0, 255).astype(np.uint8)).save(path, quality=90)

    for split in ("train", "val"):
        for i in range(images):
            jpeg(root / "imagenet" / split / WNIDS[i % 4] / f"{WNIDS[i % 4]}_{i}.JPEG")
    cifar = root / "cifar-100-python"
    cifar.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", max(images, 256)), ("test", max(images // 4, 64))):
        data = {"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8), "fine_labels": [i % 100 for i in range(count)]}
        (cifar / split).write_bytes(pickle.dumps(data, protocol=2))
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    cub = root / "CUB_200_2011"
    names = [f"{1 + i % 2:03d}.Bird_{i % 2}/b{i}.jpg" for i in range(images)]
    cub.mkdir(parents=True, exist_ok=True)
    (cub / "classes.txt").write_text("1 001.Bird_0\n2 002.Bird_1\n")
    (cub / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (cub / "train_test_split.txt").write_text("".join(f"{i + 1} {int(i % 4 != 0)}\n" for i in range(images)))
    (cub / "image_class_labels.txt").write_text("".join(f"{i + 1} {1 + i % 2}\n" for i in range(images)))
    (cub / "bounding_boxes.txt").write_text("".join(f"{i + 1} 10.0 12.0 {size[1] - 40}.0 {size[0] - 30}.0\n" for i in range(images)))
    for name in names:
        jpeg(cub / "images" / name)


# ----------------------------------------------------------------------------------------- compute
def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_training(name: str, device, batch: int, steps: int, precision: str, mode: str, size: int) -> float:
    """Training images/s with the images already on the device (LoRA r=4): eager, compiled or graphs."""
    torch.manual_seed(0)
    model = MultiHeadModel(create(name, num_classes=1000, img_size=size) if "vit" in name else create(name, num_classes=1000))
    head = model.add_head("task", 100)
    build_method(config_module.method_config_from_dict({"name": "lora", "rank": 4})).prepare(model, "task")
    head.requires_grad_(True)
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    amp = torch.bfloat16 if precision == "bf16" else None
    optimizer = make_optimizer(trainable_parameters(model), config_module.TrainConfig(), device)
    forward = {"eager": model, "compiled": None, "graphs": None}[mode] or torch.compile(model, **({"mode": "reduce-overhead"} if mode == "graphs" else {}))
    images, labels = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 100, (batch,), device=device)
    model.train()
    warmup = 3 if mode != "eager" else 1
    for step in range(steps + warmup):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        if mode == "graphs":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, amp):
            loss = F.cross_entropy(forward(images, ["task"])["task"].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def compute_evaluation(name: str, device, batch: int, steps: int, precision: str, size: int) -> float:
    model = MultiHeadModel(create(name, num_classes=1000, img_size=size) if "vit" in name else create(name, num_classes=1000)).to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        for step in range(steps + 1):
            if step == 1:
                _sync(device)
                start = time.perf_counter()
            with autocast(device, torch.bfloat16 if precision == "bf16" else None):
                model(images, ["upstream"])
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def knn_vote(device, bank_size: int, queries: int, dim: int = 768) -> float:
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(bank_size, dim, device=device), dim=-1)
    labels = torch.randint(0, 1000, (bank_size,), device=device)
    query = F.normalize(torch.randn(queries, dim, device=device), dim=-1)
    knn_predict_many(bank, labels, query[:64], ks=(10, 20, 100, 200), temperature=0.07, num_classes=1000)
    _sync(device)
    start = time.perf_counter()
    knn_predict_many(bank, labels, query, ks=(10, 20, 100, 200), temperature=0.07, num_classes=1000, chunk=4096)
    _sync(device)
    return time.perf_counter() - start


# -------------------------------------------------------------------------------------- actual runs
def actual_run(args, overrides: list[str], name: str, preset: str | None = None):
    """A real ``forgetlab run``; returns its folder (tasks.json, upstream_eval.json)."""
    from forgetlab.presets import preset_tree
    from forgetlab.runner import run

    common = [f"data.root={args.out / 'data'}", "backbone.random_init=true", f"device={args.device.type}", f"out_dir={args.out / 'runs'}",
              f"name={name}", f"data.workers={min(8, os.cpu_count() or 1)}", "train.log_every=25"]  # fmt: skip
    if args.small:
        common += ["backbone.name=test_vit", "backbone.image_size=32"]
    start = time.perf_counter()
    folder = run(config_module.resolve(preset_tree(preset) if preset else {}, [*common, *overrides]), log=say)
    say(f"{name}: {time.perf_counter() - start:.0f}s")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU (the code path, not the numbers)")
    parser.add_argument("--out", default=None, help="folder for the data and runs (default: a temporary one, removed)")
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    device, small = args.device, args.small
    temporary = args.out is None
    args.out = Path(args.out or tempfile.mkdtemp(prefix="forgetlab-gpu-check-"))
    os.environ["FORGETLAB_HOME"] = str(args.out / "home")
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    say(f"{label}, torch {torch.__version__}; data and runs in {args.out}")
    name, size = ("test_vit", 32) if small else ("vit_base_patch16_224", 224)
    images, steps = (48, 3) if small else (2048, 20)
    cuda = device.type == "cuda"
    try:
        write_data(args.out / "data", images, (375, 500) if not small else (120, 160))
        say("data written")
        table = Table()
        # 1. references
        fast = "compiled" if cuda else "eager"
        big = 128 if not small else 16
        ref_bf16 = compute_training(name, device, big, steps, "bf16" if cuda else "fp32", fast, size)
        table.row(f"compute-only training, batch {big}, {'bf16' if cuda else 'fp32'}, {fast}", ref_bf16, "img/s")
        ref_eval = compute_evaluation(name, device, 256 if not small else 32, steps, "bf16" if cuda else "fp32", size)
        table.row(f"compute-only evaluation, batch {256 if not small else 32}, {'bf16' if cuda else 'fp32'}", ref_eval, "img/s")
        # 2. actual run, timm's training transform, batch 128 bf16, steady state
        run_steps = 150 if not small else 4
        folder = actual_run(args, ["data.upstream=imagenet", "data.tasks=[cifar100]", "backbone.num_classes=4", "method.name=lora",
                                   "method.rank=4", f"train.batch_size={big}", f"train.max_steps={run_steps}", f"precision={'bf16' if cuda else 'fp32'}",
                                   "data.pipeline=device", "preprocess.color_jitter=0.4", "train.select=last"], "transform-run")  # fmt: skip
        task = folder.read_tasks()[0]
        table.row(f"actual run, batch {big}, timm's training transform, CIFAR-100 arrays, steady state", task["steady_images_per_second"], "img/s", ref_bf16)
        table.row("  the same run: warm-up (compilation) seconds", task["warmup_seconds"], "s")
        # 3. paper-2 preset, twice (the k-NN bank is read by the second)
        if cuda:
            ref_tf32 = compute_training(name, device, 128, steps, "tf32", "compiled", size)
            table.row("compute-only training, batch 128, tf32, compiled", ref_tf32, "img/s")
        else:
            ref_tf32 = ref_bf16
        paper2 = ["data.pipeline=device", f"train.max_steps={run_steps}", "train.select=last", "data.max_test=" + str(images)]
        if small:
            paper2 += [f"train.batch_size={big}"]
        banks_before = 0
        for attempt in ("first", "second"):
            folder = actual_run(args, paper2, f"paper2-{attempt}", preset="paper2-lora-r4")
            task, upstream = folder.read_tasks()[0], folder.read_upstream_eval()
            if attempt == "first":
                table.row("paper2-lora-r4, steady state", task["steady_images_per_second"], "img/s", ref_tf32)
            banks = len(list((args.out / "home" / "knn-banks").glob("*.safetensors")))
            table.row(f"paper-2 k-NN row ({images} bank + {images} query JPEGs), {attempt} run", upstream[0]["seconds"], "s")
            table.row(f"  k-NN banks computed and written by the {attempt} run (second run: 0 = every bank reused)", banks - banks_before, "files")
            banks_before = banks
        # 4. upstream evaluation over JPEG files: first pass (writes the crop cache), later pass (reads it)
        folder = actual_run(args, ["data.upstream=imagenet", "data.tasks=[cifar100]", "backbone.num_classes=4", "train.max_steps=1",
                                   "data.pipeline=device", "data.eval_cache=on", "eval.batch_size=" + str(256 if not small else 32),
                                   f"precision={'bf16' if cuda else 'fp32'}"], "eval-passes")  # fmt: skip
        passes = folder.read_upstream_eval()
        for index, what in ((0, "first pass (computes the crop cache)"), (1, "later pass (reads cached crops)")):
            table.row(f"upstream evaluation over {passes[index]['images']} JPEGs, {what}", passes[index]["images"] / max(passes[index]["seconds"], 1e-9), "img/s", ref_eval)
        # 5. one CMYK JPEG in a batch
        from forgetlab.data import device_pipeline

        payloads = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted((args.out / "data" / "imagenet" / "val").rglob("*.JPEG"))[:7]]
        cmyk = args.out / "cmyk.jpg"
        Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(cmyk, quality=90)
        payloads.append(torch.frombuffer(bytearray(cmyk.read_bytes()), dtype=torch.uint8))
        alone, original = [], device_pipeline._decode_one
        device_pipeline._decode_one = lambda *a, **k: alone.append(1) or original(*a, **k)
        try:
            device_pipeline.decode_batch(payloads, [f"image {i}" for i in range(8)], device)
        finally:
            device_pipeline._decode_one = original
        table.row("a batch of 8 JPEGs holding one CMYK: images decoded one by one", len(alone), "images")
        # 6. paper-1 preset over CUB (batch 32, fp32, train.compile=auto)
        ref_fp32_32 = compute_training(name, device, 32 if not small else 8, steps, "fp32", "graphs" if cuda else "eager", size)
        table.row(f"compute-only training, batch {32 if not small else 8}, fp32, {'CUDA graphs' if cuda else 'eager'}", ref_fp32_32, "img/s")
        folder = actual_run(args, ["data.tasks=[cub200]", "data.pipeline=device", "backbone.num_classes=4", f"train.max_steps={run_steps}", "train.select=last",
                                   "data.max_test=" + str(images)] + (["train.batch_size=8"] if small else []), "paper1", preset="paper1-vit")  # fmt: skip
        table.row("paper1-vit over CUB, steady state (train.compile=auto)", folder.read_tasks()[0]["steady_images_per_second"], "img/s", ref_fp32_32)
        # 7. the remaining compute-only rows and the k-NN vote
        for batch, precision, mode in ([(128, "bf16", "eager"), (32, "bf16", "eager"), (32, "bf16", "graphs"), (32, "fp32", "eager")] if cuda else [(8, "fp32", "eager")]):
            table.row(f"compute-only training, batch {batch}, {precision}, {mode}", compute_training(name, device, batch, steps, precision, mode, size), "img/s")
        bank, queries = (32_000, 2_000) if small else (1_281_167, 50_000)
        table.row(f"k-NN vote, bank {bank:,} x 768, {queries:,} queries, k = 10, 20, 100, 200", knn_vote(device, bank, queries), "s")
        print(f"\n{label}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}{' (--small: not GPU figures)' if small else ''}", flush=True)
    finally:
        if temporary:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
