"""A fingerprint of everything forgetlab writes, to prove a redesign changes no behaviour.

    PYTHONPATH=src python scripts/behaviour_snapshot.py run OUT          # about 5 min on 2 CPU cores
    python scripts/behaviour_snapshot.py compare BEFORE.json AFTER.json  # exit 1 on any difference
    python scripts/behaviour_snapshot.py fingerprint OUT                 # snapshot.json of OUT again

``run`` builds two tiny random offline backbones, runs a fixed set of tiny runs through the Python API
(the default LoRA run, every method, LwF + replay, the LoRA variants, the keep policy, the ResNet, the long
setting, the k-NN evaluator, best-checkpoint selection), a two-cell sweep, ``explain`` on one run and the
report over all of them, captures the text of ``config``, ``show`` and ``presets``, and writes
``OUT/snapshot.json``: the SHA-256 of every file, with wall-clock figures, dates, the commit and the
machine taken out. ``compare`` lists the files that differ, appeared or vanished.

Run both sides on one machine and one torch build (the CPU kernels decide the last bits).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

# forgetlab.results.TIMING_KEYS and the figures earlier versions wrote: the tool reads folders of the commit
# compared against, so it keeps its own list rather than import today's.
TIMING = {
    "train_seconds",
    "images_per_second",
    "eval_seconds",
    "seconds",
    "warmup_seconds",
    "selection_seconds",
    "steady_seconds",
    "steady_images_per_second",
    "drift_seconds",
    "wall_seconds",
    "elapsed_seconds",
}
SKIPPED = {"environment.json", ".lock"}  # the machine, the date, the commit; the lock's pid
TEXT_NOISE = [  # wall-clock figures, dates and commits in text files and logs
    (re.compile(r"[\d.,]+ (images|img)/s"), "<speed>"),
    (re.compile(r"\d+(\.\d+)? ?(s|ms|min|h)\b"), "<time>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<date>"),
    (re.compile(r"\b[0-9a-f]{7,40}\b"), "<hex>"),
    (re.compile(r"(#|id=\")(p|image|m)[0-9a-f]{8,12}\b"), r"\1<svg-id>"),  # matplotlib's per-process ids
    (re.compile(r"<dc:date>[^<]*</dc:date>"), "<dc:date/>"),
]


def _tiny(backbone: Path, out: Path, name: str, **extra) -> dict:
    return {
        "backbone.name": backbone.stem,
        "backbone.weights": str(backbone),
        "out_dir": str(out),
        "name": name,
        "data.tasks": ["fontfamily", "digits"],
        "data.max_train": 48,
        "data.max_test": 40,
        "train.batch_size": 16,
        "train.max_steps": 3,
        "eval.batch_size": 64,
        "eval.probe_images": 64,
        **extra,
    }


RUNS = {  # name: (backbone, overrides)
    "lora": ("offline_vit", {}),
    "lora-resnet": ("offline_resnet", {}),
    "full": ("offline_vit", {"method.name": "full", "train.lr": 1e-4}),
    "topk": ("offline_vit", {"method.name": "topk", "method.k": 1}),
    "linear": ("offline_vit", {"method.name": "linear"}),
    "fullrank": ("offline_vit", {"method.name": "fullrank"}),
    "block-expansion": ("offline_vit", {"method.name": "block_expansion"}),
    "lwf-replay": ("offline_vit", {"lwf.alpha": 1.0, "replay.size": 16, "replay.batch_size": 4}),
    "rslora-dora": ("offline_vit", {"method.scaling": "rslora", "method.dora": True, "method.rank": 2}),
    "pissa-qv": ("offline_vit", {"method.init": "pissa", "method.targets": "q,v"}),
    "keep": ("offline_vit", {"method.policy": "keep"}),
    "long": (
        "offline_vit",
        {
            "data.tasks": [
                "fontfamily:samples_half1",
                "digits:samples_half1",
                "fontfamily:samples_half2",
                "digits:samples_half2",
            ]
        },
    ),
    "knn-resnet": ("offline_resnet", {"eval.upstream_evaluator": ["head", "knn"], "eval.knn_k": 5}),
    "best": ("offline_resnet", {"train.select": "best", "train.eval_every": 2, "train.max_steps": 4}),
}


def _backbones(folder: Path) -> dict[str, Path]:
    """Both offline backbones pretrained for one epoch (so that upstream accuracy is far from chance and
    forgetting has images to count), through forgetlab's own pretraining."""
    from forgetlab.pretrain import pretrain

    files = {}
    for name in ("offline_vit", "offline_resnet"):
        with contextlib.redirect_stdout(io.StringIO()):
            pretrained = pretrain(name, out_dir=folder / f"pretrained-{name}", epochs=1)
        files[name] = folder / f"{name}.safetensors"
        files[name].write_bytes((pretrained / "model.safetensors").read_bytes())
    return files


def _cli(*argv: str) -> str:
    from forgetlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return f"exit {code}\n--- stdout\n{out.getvalue()}--- stderr\n{err.getvalue()}"


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.environ["FORGETLAB_HOME"] = str(out / "home")
    os.environ["FORGETLAB_PROGRESS"] = "0"
    os.environ.setdefault("TIMM_FUSED_ATTN", "0")
    os.environ["SOURCE_DATE_EPOCH"] = "0"  # matplotlib's SVG date
    import matplotlib
    import torch

    matplotlib.rcParams["svg.hashsalt"] = "forgetlab"  # fixed clip-path and image ids
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import forgetlab

    backbones = _backbones(out)
    runs = out / "runs"
    texts = out / "texts"
    texts.mkdir(exist_ok=True)
    for name, (backbone, extra) in RUNS.items():
        print(f"run {name}", flush=True)
        forgetlab.run(log=None, **_tiny(backbones[backbone], runs, name, **extra))
    sweep = out / "sweep.yaml"
    base = _tiny(backbones["offline_resnet"], out / "sweeps", "unused")
    base.pop("name"), base.pop("out_dir")
    sweep.write_text(
        json.dumps({"name": "ranks", "out_dir": str(out / "sweeps"), "base": base, "grid": {"method.rank": [1, 2]}})
    )
    (texts / "sweep.txt").write_text(_cli("sweep", str(sweep)))
    (texts / "sweep-status.txt").write_text(_cli("sweep", str(sweep), "--status"))
    (texts / "explain.txt").write_text(
        _cli("explain", str(runs / "lora"), "--images", "24", "--parts", "attribution,spectra,drift")
    )
    (texts / "config.txt").write_text(_cli("config", "method.rank=8", "lwf.alpha=1"))
    (texts / "config-keys.txt").write_text(_cli("config", "--keys"))
    (texts / "presets.txt").write_text(_cli("presets"))
    for name in ("lora", "keep", "knn-resnet", "long"):
        (texts / f"show-{name}.txt").write_text(_cli("show", str(runs / name)))
    (texts / "show-sweep.txt").write_text(_cli("show", str(out / "sweeps" / "ranks")))
    forgetlab.report([runs, out / "sweeps" / "ranks"], out / "report", permutations=200)
    (out / "snapshot.json").write_text(json.dumps(fingerprint(out), indent=1, sort_keys=True))
    print(f"wrote {out / 'snapshot.json'}")


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _content(path: Path, root: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".json":
        with contextlib.suppress(ValueError):
            return json.dumps(_without_timing(json.loads(data)), sort_keys=True).replace(str(root), "<out>").encode()
    if path.suffix in (".txt", ".md", ".html", ".csv", ".yaml", ".log", ".svg"):
        text = data.decode("utf-8", "replace").replace(str(root), "<out>")
        for pattern, replacement in TEXT_NOISE:
            text = pattern.sub(replacement, text)
        return text.encode()
    return data


def fingerprint(root: Path) -> dict[str, str]:
    """``{relative path: sha256 of its normalised content}`` of every file under ``root`` but the home."""
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or relative.parts[0] == "home" or path.name in SKIPPED or path.name == "snapshot.json":
            continue
        digests[str(relative)] = hashlib.sha256(_content(path, root)).hexdigest()
    return digests


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    for label, names in (
        ("differs", changed),
        ("only before", sorted(a.keys() - b.keys())),
        ("only after", sorted(b.keys() - a.keys())),
    ):
        for name in names:
            print(f"{label}: {name}")
    same = len(a.keys() & b.keys()) - len(changed)
    print(
        f"{same} identical, {len(changed)} differ, {len(a.keys() - b.keys())} only before, "
        f"{len(b.keys() - a.keys())} only after"
    )
    return 0 if not changed and a.keys() == b.keys() else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]).resolve())
    elif len(sys.argv) == 3 and sys.argv[1] == "fingerprint":  # again, for a folder written earlier
        root = Path(sys.argv[2]).resolve()
        (root / "snapshot.json").write_text(json.dumps(fingerprint(root), indent=1, sort_keys=True))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
