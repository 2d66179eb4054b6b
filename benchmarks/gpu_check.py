"""The GPU check: every row of the GPU table, measured side by side in one process.

    PYTHONPATH=src python benchmarks/gpu_check.py [--model vit_base|tiny] [--device auto] [--out DIR] [--json FILE]

Needs torch, torchvision and timm only (no venv). It writes its own synthetic data in the real layouts
(JPEGs of four sizes in ImageNet's wnid folders, CIFAR-100's pickles, a CUB_200_2011 folder with boxes),
then runs its parts in order of importance, printing each result as a row of one Markdown table as soon
as it is known (progress goes to stderr), so a run cut off by the machine's time still reports. Every row
prints its ratio to the compute-only reference and its target:

1. references: compute-only training (batch 128 bf16, compiled) and evaluation (batch 256 bf16) rates,
   which the ratios below divide by;
2. an actual run at batch 128 bf16 with timm's training transform (random-resized crop, flip, colour
   jitter 0.4) over CIFAR-100 arrays, steady state (tasks.json's ``steady_images_per_second``): >= 0.9 x;
3. ``--preset paper2-lora-r4`` (tf32) in steady state, twice in one cache home: >= 0.9 x of compiled tf32
   compute, and the second run reads row 0's k-NN bank from disk (0 banks computed for row 0; the bank
   after training is not counted: training on a GPU need not repeat bit for bit);
4. upstream evaluation over 20,037 JPEGs of four sizes (a partial last batch) in a fresh cache home:
   the first pass (computes the evaluation-crop cache while it evaluates) >= 0.5 x and a later pass
   (reads the cached crops) >= 0.9 x of the compute-only evaluation rate;
5. a JPEG batch holding one CMYK JPEG: the one-by-one decoder takes that image only;
6. ``--preset paper1-vit`` (batch 32, fp32, ``train.compile=auto``) over the CUB folder (mixed sizes,
   boxes), steady state: >= 0.9 x of fp32 compute with CUDA graphs;
7. the remaining compute-only rows (eager rates) and the k-NN vote over a 1.28 M x 768 bank.

Budget on one H100 (estimated, not measured: no GPU has run this version): data ~10 s (distinct JPEGs
encoded once, the files hard links to them; target < 30 s); compilations ~4 x 40-60 s; the runs
~150 steps each, evaluation 2 x 20,037 images: under 10 minutes in all (the last row is the total).

``--model tiny`` runs every part with timm's ``test_vit`` at 32 px on a few dozen images, no loader
workers: the code path in about a minute on a CPU (the suite runs it), its numbers say nothing about a
GPU. ``--json FILE`` writes the rows as JSON too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from forgetlab import config as config_module
from forgetlab.evaluate import KNNEvaluator, knn_predict_many
from forgetlab.methods import build_method
from forgetlab.models.backbones import create
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runtime import autocast, resolve_device
from forgetlab.train import make_optimizer, trainable_parameters

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
RUN_TARGET, FIRST_PASS_TARGET, LATER_PASS_TARGET = 0.9, 0.5, 0.9


@dataclass(frozen=True)
class Scale:
    """The sizes of one check: the model, its batches, the data and the run lengths."""

    backbone: str
    image_size: int
    sizes: tuple[tuple[int, int], ...]  # the JPEGs' (height, width), cycled
    bases: int  # distinct JPEGs per size (the files are hard links to them)
    eval_images: int  # the upstream test split (ImageNet val): part 4's passes
    bank_images: int  # the upstream train split (ImageNet train): paper 2's k-NN bank
    array_images: int  # CIFAR-100 train
    cub_images: int
    big_batch: int  # paper 2's training batch
    small_batch: int  # paper 1's training batch
    eval_batch: int
    reference_steps: int
    run_steps: int
    task_test: int  # data.max_test of the training runs (upstream and task test sets)
    bank_vote: tuple[int, int]  # part 7's k-NN vote: bank rows, queries
    workers: int | None  # None: min(8, CPUs)


SCALES = {
    "vit_base": Scale(
        "vit_base_patch16_224",
        224,
        ((375, 500), (500, 375), (333, 500), (281, 500)),
        32,
        20_037,
        4_133,
        19_250,
        1_037,
        128,
        32,
        256,
        20,
        150,
        1_037,
        (1_281_167, 50_000),
        None,
    ),
    "tiny": Scale(
        "test_vit",
        32,
        ((60, 80), (80, 60), (50, 75), (45, 80)),
        2,
        101,
        53,
        150,
        45,
        16,
        8,
        32,
        4,
        6,
        37,
        (8_000, 500),
        0,
    ),
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Table:
    """One Markdown table, printed a row at a time; ``rows`` keeps them for ``--json``."""

    def __init__(self):
        self.rows: list[dict] = []
        print("| what | measured | reference | ratio | target | met |\n|---|---:|---:|---:|---|---|", flush=True)

    def row(
        self, what: str, value, unit: str, reference: float | None = None, target: str = "", met: bool | None = None
    ) -> None:
        """One row; ``target`` says what the value or ratio must reach (``met`` whether it does)."""
        number = isinstance(value, (int, float)) and value is not None and math.isfinite(value)
        measured = (
            f"{value:,} {unit}" if isinstance(value, int) else f"{value:,.1f} {unit}" if number else f"{value} {unit}"
        )
        ratio = value / reference if number and reference else None
        if met is None and ratio is not None and target.startswith(">="):
            met = ratio >= float(target.split()[1])
        print(
            f"| {what} | {measured} | {f'{reference:,.1f} {unit}' if reference else ''} "
            f"| {f'{ratio:.2f} x' if ratio is not None else ''} | {target} | "
            f"{'' if met is None else 'yes' if met else 'NO'} |",
            flush=True,
        )
        self.rows.append(
            {
                "what": what,
                "value": value,
                "unit": unit,
                "reference": reference,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )


# ----------------------------------------------------------------------------------------------- data
def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    phase = rng.uniform(0, 6, 3)
    texture = np.stack([127 + 90 * np.sin(x / (5 + c) + phase[c]) * np.cos(y / (7 + c)) for c in range(3)], -1)
    buffer = BytesIO()
    Image.fromarray((texture + rng.normal(0, 12, texture.shape)).clip(0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()


def write_data(root: Path, scale: Scale) -> None:
    """ImageNet (wnid folders: train is paper 2's bank, val the evaluation passes), CIFAR-100 pickles and a
    CUB_200_2011 folder. File ``i`` has size ``sizes[i % 4]``; each is a hard link to one of ``bases``
    distinct JPEGs of its size (decoding costs the same; writing 25,000 files takes seconds)."""
    jobs = [(size, index) for size in scale.sizes for index in range(scale.bases)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL while encoding
        encoded = list(pool.map(lambda job: _jpeg(np.random.default_rng(job[1] * 7 + job[0][0]), job[0]), jobs))
    bases = root / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(encoded):
        (bases / f"{number}.jpg").write_bytes(data)

    def place(path: Path, i: int) -> tuple[int, int]:
        """File ``i`` at ``path``; returns its (height, width)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        size_index = i % len(scale.sizes)
        source = bases / f"{size_index * scale.bases + (i // len(scale.sizes)) % scale.bases}.jpg"
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
        return scale.sizes[size_index]

    for split, count in (("train", scale.bank_images), ("val", scale.eval_images)):
        for i in range(count):
            place(root / "imagenet" / split / WNIDS[i % 4] / f"{WNIDS[i % 4]}_{i}.JPEG", i)
    rng = np.random.default_rng(0)
    cifar = root / "cifar-100-python"
    cifar.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", scale.array_images), ("test", scale.task_test)):
        data = {
            "data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
            "fine_labels": [i % 100 for i in range(count)],
        }
        (cifar / split).write_bytes(pickle.dumps(data, protocol=2))
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    cub = root / "CUB_200_2011"
    names = [f"{1 + i % 2:03d}.Bird_{i % 2}/b{i}.jpg" for i in range(scale.cub_images)]
    sizes = [place(cub / "images" / name, i) for i, name in enumerate(names)]
    (cub / "classes.txt").write_text("1 001.Bird_0\n2 002.Bird_1\n")
    (cub / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (cub / "train_test_split.txt").write_text("".join(f"{i + 1} {int(i % 4 != 0)}\n" for i in range(len(names))))
    (cub / "image_class_labels.txt").write_text("".join(f"{i + 1} {1 + i % 2}\n" for i in range(len(names))))
    (cub / "bounding_boxes.txt").write_text(
        "".join(f"{i + 1} 3.0 4.0 {w - 10}.0 {h - 8}.0\n" for i, (h, w) in enumerate(sizes))
    )


# ----------------------------------------------------------------------------------------- compute
def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(scale: Scale, device, classes: int = 1000):
    return MultiHeadModel(create(scale.backbone, num_classes=classes, img_size=scale.image_size)).to(device)


def compute_training(scale: Scale, device, batch: int, precision: str, mode: str) -> float:
    """Training images/s with the images already on the device (LoRA r=4): eager, compiled or graphs."""
    torch.manual_seed(0)
    model = MultiHeadModel(create(scale.backbone, num_classes=1000, img_size=scale.image_size))
    head = model.add_head("task", 100)
    build_method(config_module.method_config_from_dict({"name": "lora", "rank": 4})).prepare(model, "task")
    head.requires_grad_(True)
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    amp = torch.bfloat16 if precision == "bf16" else None
    optimizer = make_optimizer(trainable_parameters(model), config_module.TrainConfig(), device)
    forward = (
        model if mode == "eager" else torch.compile(model, **({"mode": "reduce-overhead"} if mode == "graphs" else {}))
    )
    images = torch.randn(batch, 3, scale.image_size, scale.image_size, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    model.train()
    warmup = 3 if mode != "eager" else 1
    for step in range(scale.reference_steps + warmup):
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
    return batch * scale.reference_steps / (time.perf_counter() - start)


@torch.no_grad()
def compute_evaluation(scale: Scale, device, precision: str) -> float:
    """Evaluation images/s of the same model with the images already on the device."""
    model = _model(scale, device).eval()
    images = torch.randn(scale.eval_batch, 3, scale.image_size, scale.image_size, device=device)
    for step in range(scale.reference_steps + 1):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        with autocast(device, torch.bfloat16 if precision == "bf16" else None):
            model(images, ["upstream"])
    _sync(device)
    return scale.eval_batch * scale.reference_steps / (time.perf_counter() - start)


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
def actual_run(args, overrides: list[str], name: str, home: str, preset: str | None = None):
    """A real ``forgetlab run`` with its cache in ``<out>/<home>``; returns its folder (tasks.json,
    upstream_eval.json)."""
    from forgetlab.presets import preset_tree
    from forgetlab.runner import run

    os.environ["FORGETLAB_HOME"] = str(args.out / home)
    scale = args.scale
    workers = scale.workers if scale.workers is not None else min(8, os.cpu_count() or 1)
    common = [
        f"data.root={args.out / 'data'}",
        "backbone.random_init=true",
        f"device={args.device.type}",
        f"out_dir={args.out / 'runs'}",
        f"name={name}",
        f"data.workers={workers}",
        "train.log_every=25",
        f"backbone.name={scale.backbone}",
        f"backbone.image_size={scale.image_size}",
    ]
    start = time.perf_counter()
    folder = run(config_module.resolve(preset_tree(preset) if preset else {}, [*common, *overrides]), log=say)
    say(f"{name}: {time.perf_counter() - start:.0f}s")
    return folder


class BankLog:
    """Records, per call of the k-NN evaluator (row 0 first), whether it computed its bank (not read it from disk)."""

    def __enter__(self):
        self.computed: list[bool] = []
        self.original = original = KNNEvaluator.__call__
        log = self.computed

        def call(evaluator, *args, **kwargs):
            before = evaluator.computed
            result = original(evaluator, *args, **kwargs)
            log.append(evaluator.computed > before)
            return result

        KNNEvaluator.__call__ = call
        return self

    def __exit__(self, *exc):
        KNNEvaluator.__call__ = self.original


def _cuda_or(cuda: bool, on_cuda: str, elsewhere: str) -> str:
    return on_cuda if cuda else elsewhere


def part_training(args, table: Table, references: dict) -> None:
    """Part 2: timm's training transform over CIFAR-100 arrays, batch 128, steady state."""
    scale, cuda = args.scale, args.device.type == "cuda"
    folder = actual_run(
        args,
        [
            "data.upstream=imagenet",
            "data.tasks=[cifar100]",
            "backbone.num_classes=4",
            "method.name=lora",
            "method.rank=4",
            f"train.batch_size={scale.big_batch}",
            f"train.max_steps={scale.run_steps}",
            f"precision={_cuda_or(cuda, 'bf16', 'fp32')}",
            "data.pipeline=device",
            "preprocess.color_jitter=0.4",
            "train.select=last",
            f"data.max_test={scale.task_test}",
        ],
        "transform-run",
        "home-transform",
    )
    task = folder.read_tasks()[0]
    table.row(
        f"actual run, batch {scale.big_batch}, timm's training transform, CIFAR-100 arrays, steady state",
        task["steady_images_per_second"] or float("nan"),
        "img/s",
        references["train"],
        f">= {RUN_TARGET} x",
    )
    table.row("  the same run: warm-up (loader start, compilation) seconds", task["warmup_seconds"], "s")


def part_paper2(args, table: Table, references: dict) -> None:
    """Part 3: paper 2's preset twice in one cache home; the second run must read row 0's k-NN bank."""
    scale, device = args.scale, args.device
    if device.type == "cuda":
        references["tf32"] = compute_training(scale, device, scale.big_batch, "tf32", "compiled")
        table.row(
            f"compute-only training, batch {scale.big_batch}, tf32, compiled",
            references["tf32"],
            "img/s",
            target="reference",
        )
    paper2 = [
        "data.pipeline=device",
        f"train.max_steps={scale.run_steps}",
        "train.select=last",
        f"data.max_test={scale.bank_images}",
        f"train.batch_size={scale.big_batch}",
    ]
    for attempt in ("first", "second"):
        with BankLog() as banks:
            folder = actual_run(args, paper2, f"paper2-{attempt}", "home-paper2", preset="paper2-lora-r4")
        task, upstream = folder.read_tasks()[0], folder.read_upstream_eval()
        if attempt == "first":
            table.row(
                "paper2-lora-r4, steady state",
                task["steady_images_per_second"] or float("nan"),
                "img/s",
                references.get("tf32", references["train"]),
                f">= {RUN_TARGET} x",
            )
        table.row(
            f"paper-2 k-NN row 0 ({scale.bank_images:,} bank + {upstream[0]['images']:,} query JPEGs), {attempt} run",
            upstream[0]["seconds"],
            "s",
        )
        row0 = int(banks.computed[0]) if banks.computed else -1
        table.row(
            f"  row 0's k-NN bank computed (not read from disk) by the {attempt} run",
            row0,
            "banks",
            target="1" if attempt == "first" else "0",
            met=row0 == (1 if attempt == "first" else 0),
        )


def part_evaluation(args, table: Table, references: dict) -> None:
    """Part 4: upstream evaluation over JPEG files in a fresh cache home: first and later pass."""
    scale, cuda = args.scale, args.device.type == "cuda"
    home = args.out / "home-eval"
    if (home / "eval-crops").exists():
        raise RuntimeError(f"{home} is not fresh: its evaluation crops would make the first pass a later one")
    folder = actual_run(
        args,
        [
            "data.upstream=imagenet",
            "data.tasks=[cifar100]",
            "backbone.num_classes=4",
            "train.max_steps=1",
            "data.pipeline=device",
            "data.eval_cache=on",
            f"eval.batch_size={scale.eval_batch}",
            f"precision={_cuda_or(cuda, 'bf16', 'fp32')}",
            f"data.max_test={scale.eval_images}",
        ],
        "eval-passes",
        "home-eval",
    )
    passes = folder.read_upstream_eval()
    written = len(list((home / "eval-crops").glob("*/crops.npy")))
    table.row(
        "  evaluation-crop caches written by the first pass (fresh cache home)",
        written,
        "caches",
        target=">= 1",
        met=written >= 1,
    )
    partial = scale.eval_images % scale.eval_batch
    for index, what, target in (
        (0, "first pass (computes the crop cache)", FIRST_PASS_TARGET),
        (1, "later pass (reads cached crops)", LATER_PASS_TARGET),
    ):
        images = passes[index]["images"]
        table.row(
            f"upstream evaluation over {images:,} JPEGs of {len(scale.sizes)} sizes (last batch {partial}), {what}",
            images / max(passes[index]["seconds"], 1e-9),
            "img/s",
            references["eval"],
            f">= {target} x",
        )


def part_cmyk(args, table: Table) -> None:
    """Part 5: one CMYK JPEG among seven YCbCr ones: decoded alone, the others in one batched call."""
    from forgetlab.data import device_pipeline

    files = sorted((args.out / "data" / "imagenet" / "val").rglob("*.JPEG"))[:7]
    payloads = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    cmyk = args.out / "cmyk.jpg"
    Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(cmyk, quality=90)
    payloads.append(torch.frombuffer(bytearray(cmyk.read_bytes()), dtype=torch.uint8))
    alone, original = [], device_pipeline._decode_one
    device_pipeline._decode_one = lambda *a, **k: alone.append(1) or original(*a, **k)
    try:
        images = device_pipeline.decode_batch(payloads, [f"image {i}" for i in range(8)], args.device)
    finally:
        device_pipeline._decode_one = original
    assert len(images) == 8
    table.row(
        "a batch of 8 JPEGs holding one CMYK: images decoded one by one",
        len(alone),
        "images",
        target="1",
        met=len(alone) == 1,
    )


def part_paper1(args, table: Table) -> None:
    """Part 6: paper 1's preset over CUB (mixed sizes, boxes), batch 32 fp32, against fp32 compute."""
    scale, cuda = args.scale, args.device.type == "cuda"
    mode = _cuda_or(cuda, "graphs", "eager")
    reference = compute_training(scale, args.device, scale.small_batch, "fp32", mode)
    table.row(f"compute-only training, batch {scale.small_batch}, fp32, {mode}", reference, "img/s", target="reference")
    folder = actual_run(
        args,
        [
            "data.tasks=[cub200]",
            "data.pipeline=device",
            "backbone.num_classes=4",
            f"train.max_steps={scale.run_steps}",
            "train.select=last",
            f"data.max_test={scale.task_test}",
            f"train.batch_size={scale.small_batch}",
        ],
        "paper1",
        "home-paper1",
        preset="paper1-vit",
    )
    table.row(
        "paper1-vit over CUB, steady state (train.compile=auto)",
        folder.read_tasks()[0]["steady_images_per_second"] or float("nan"),
        "img/s",
        reference,
        f">= {RUN_TARGET} x",
    )


def part_rest(args, table: Table) -> None:
    """Part 7: the remaining compute-only rows and the k-NN vote."""
    scale, device = args.scale, args.device
    rows = [(128, "bf16", "eager"), (32, "bf16", "eager"), (32, "bf16", "graphs"), (32, "fp32", "eager")]
    for batch, precision, mode in rows if device.type == "cuda" else [(scale.small_batch, "fp32", "eager")]:
        table.row(
            f"compute-only training, batch {batch}, {precision}, {mode}",
            compute_training(scale, device, batch, precision, mode),
            "img/s",
            target="reference",
        )
    bank, queries = scale.bank_vote
    table.row(
        f"k-NN vote, bank {bank:,} x 768, {queries:,} queries, k = 10, 20, 100, 200",
        knn_vote(device, bank, queries),
        "s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--model",
        choices=sorted(SCALES),
        default="vit_base",
        help="vit_base: the GPU figures; tiny: the code path on a CPU",
    )
    parser.add_argument("--small", action="store_true", help="the same as --model tiny")
    parser.add_argument("--out", default=None, help="folder for the data and runs (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    args.scale = SCALES["tiny" if args.small else args.model]
    temporary = args.out is None
    args.out = Path(args.out or tempfile.mkdtemp(prefix="forgetlab-gpu-check-"))
    device, began = args.device, time.perf_counter()
    cuda = device.type == "cuda"
    label = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    say(f"{label}, torch {torch.__version__}, {args.scale.backbone}; data and runs in {args.out}")
    try:
        write_data(args.out / "data", args.scale)
        table = Table()
        table.row(
            "synthetic data written",
            time.perf_counter() - began,
            "s",
            target="< 30 s",
            met=time.perf_counter() - began < 30,
        )
        precision, fast = _cuda_or(cuda, "bf16", "fp32"), _cuda_or(cuda, "compiled", "eager")
        references = {
            "train": compute_training(args.scale, device, args.scale.big_batch, precision, fast),
            "eval": compute_evaluation(args.scale, device, precision),
        }
        table.row(
            f"compute-only training, batch {args.scale.big_batch}, {precision}, {fast}",
            references["train"],
            "img/s",
            target="reference",
        )
        table.row(
            f"compute-only evaluation, batch {args.scale.eval_batch}, {precision}",
            references["eval"],
            "img/s",
            target="reference",
        )
        part_training(args, table, references)
        part_paper2(args, table, references)
        part_evaluation(args, table, references)
        part_cmyk(args, table)
        part_paper1(args, table)
        part_rest(args, table)
        total = time.perf_counter() - began
        table.row("total", total, "s", target="< 600 s on one H100", met=total < 600 if cuda else None)
        tiny = " (--model tiny: the code path, not GPU figures)" if args.scale is SCALES["tiny"] else ""
        print(f"\n{label}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}{tiny}", flush=True)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"device": label, "model": args.scale.backbone, "rows": table.rows}, indent=1)
            )
    finally:
        if temporary:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
