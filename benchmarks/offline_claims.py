"""The offline check of the papers' claims: every method on both offline backbones, one seed.

    FORGETLAB_HOME=.cache/forgetlab .venv/bin/python benchmarks/offline_claims.py [--out runs/claims] [--seeds 0 1 2]

Runs the default sequence (fontfamily -> digits -> fontstyle, 8 epochs a task, AdamW 1e-3, the same
training config for every method) with full fine-tuning, linear probing, top-k (k=2 of 6 ViT blocks,
k=1 of 4 ResNet stages), LoRA at ranks 1, 4, 16, 64 (merged, paper 1's targets) and, on the ViT,
block expansion with p=1, 2. Every cell is an ordinary run folder, so an interrupted check resumes.
Prints (and writes to ``OUT/claims.md``) a Markdown table of what was measured, mean ± standard
deviation over the seeds when there are several; nothing is tuned. ``forgetlab report OUT`` draws it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from forgetlab import config as config_module
from forgetlab.runner import run

METHODS = [
    ("full", ["method.name=full"]),
    ("linear", ["method.name=linear"]),
    ("top-k", ["method.name=topk"]),
    *[(f"LoRA r={rank}", ["method.name=lora", f"method.rank={rank}"]) for rank in (1, 4, 16, 64)],
    *[(f"block p={copies}", ["method.name=block_expansion", f"method.copies={copies}"]) for copies in (1, 2)],
]
TOP_K = {"offline_vit": 2, "offline_resnet": 1}


def cells(out: Path, seed: int):
    for backbone in ("offline_vit", "offline_resnet"):
        for label, overrides in METHODS:
            if backbone == "offline_resnet" and "block_expansion" in overrides[0]:
                continue  # not defined for ResNets (a config error)
            if label == "top-k":
                overrides = [*overrides, f"method.k={TOP_K[backbone]}"]
                label = f"top-{TOP_K[backbone]}"
            name = f"{backbone}-{label.replace(' ', '').replace('=', '')}" + (f"-seed{seed}" if seed else "")
            yield (
                backbone,
                label,
                [f"backbone.name={backbone}", f"out_dir={out}", f"name={name}", f"seed={seed}", *overrides],
            )


def _cell(values: list[float], scale: float = 100, sign: str = "") -> str:
    values = np.asarray(values) * scale
    if len(values) == 1:
        return f"{values[0]:{sign}.2f}"
    return f"{values.mean():{sign}.2f} ± {values.std(ddof=1):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/claims", help="folder of the run folders and claims.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (folders of seed 0 carry no suffix)")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}  # (backbone, label) -> list of (params, before, after, downstream, seconds)
    for seed in args.seeds:
        for backbone, label, overrides in cells(out, seed):
            start = time.perf_counter()
            log = lambda message: print(f"[{backbone} {label} seed {seed}] {message}", flush=True)  # noqa: E731
            folder = run(config_module.load(None, overrides), log=log)
            matrix = folder.read_matrix().as_array()
            tasks = json.loads(folder.tasks.read_text())
            seconds = max(time.perf_counter() - start, sum(t["train_seconds"] + t["eval_seconds"] for t in tasks))
            results.setdefault((backbone, label), []).append(
                (
                    tasks[0]["trainable_backbone_parameters"],
                    matrix[0, 0],
                    matrix[-1, 0],
                    np.nanmean(matrix[-1, 1:]),
                    seconds,
                )
            )
    lines = [
        "| backbone | method | trainable backbone params | upstream before "
        "| upstream after | drop | mean downstream (final) | time per run |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (backbone, label), rows in results.items():
        params, before, after, downstream, seconds = map(list, zip(*rows))
        drop = [a - b for a, b in zip(after, before)]
        lines.append(
            f"| {backbone} | {label} | {params[0]:,} | {_cell(before)} | {_cell(after)} | {_cell(drop, sign='+')} | "
            f"{_cell(downstream)} | {np.mean(seconds):.0f} s |"
        )
    table = "\n".join(lines) + f"\n\nSeeds: {', '.join(map(str, args.seeds))}."
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
