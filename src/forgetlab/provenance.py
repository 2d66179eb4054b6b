"""What a run used, beyond its config: the machine and packages, the resolved preprocessing and the
weights' SHA-256 (all in the run folder's ``environment.json``, which :func:`environment_record` and
:func:`inputs_record` fill).

A run stopped and resumed may be resumed under another commit, torch or machine, so
``environment.json`` keeps a ``history``: every start and every resume with work left appends one
entry (:func:`start_entry`: date, git commit, dirty flag, package versions, device, weights' SHA-256
and ``started_at_phase``, the phase it began with: 0 for the pretrained row of a new folder, ``i + 1``
for a resume after phase ``i``). The top-level fields stay those of the latest start, as before;
:func:`with_start` appends, :func:`environment_history` reads (a folder written before the history
existed reads as one entry of unknown date), and :func:`history_line` says, for ``forgetlab show``,
which phases ran under which code when they differ.

A config may leave the preprocessing to the backbone (``preprocess.mean: null``), and a weights file
given with a tag-less timm name (``backbone.name=vit_small_patch16_224``) takes the normalisation of
timm's default tag for that architecture (mean and std 0.5), not of the file's own training (DINO's
are ImageNet's): the numbers then depend on values no config shows. :func:`inputs_record` is written
into the run folder's ``environment.json`` (``inputs``), which is not part of the run's identity
(``config.yaml`` is), so a resume compares configs as before; :func:`normalisation_note` is the run's
first log line when the mean and std were inferred rather than stated.

Imports results (below it) and, inside functions, models.backbones; the runner imports this module.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from types import SimpleNamespace

import torch

from forgetlab.errors import DataError
from forgetlab.results import file_sha256, read_json


def environment_record(device: torch.device) -> dict:
    """``environment.json``'s machine part: Python, platform, package versions (None: not installed), the
    git commit of forgetlab's source (``-dirty`` with local changes; None outside a checkout), the
    device and its name (the GPU's, or the CPU's model name), and torch's thread count."""
    packages = {}
    for name in ("forgetlab", "torch", "torchvision", "timm", "numpy", "safetensors", "nltk", "peft"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }


def git_commit() -> str | None:
    """forgetlab's source commit (``<sha>-dirty`` with local changes; None outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


HISTORY_FIELDS = ("python", "platform", "packages", "git_commit", "device", "device_name", "torch_threads")


def start_entry(record: dict, inputs: dict, phase: int) -> dict:
    """One ``history`` entry of ``environment.json``: the date (UTC, ISO 8601, seconds), the phase the
    start began with, the git commit and whether the source had local changes (``dirty``), the
    machine and package fields of ``record`` (:func:`environment_record`) and the weights' SHA-256
    (hex, None for random weights) of ``inputs`` (:func:`inputs_record`)."""
    commit = record.get("git_commit")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "started_at_phase": phase,
        "dirty": None if commit is None else commit.endswith("-dirty"),
        **{key: record.get(key) for key in HISTORY_FIELDS},
        "weights_sha256": inputs.get("weights", {}).get("sha256"),
    }


def environment_history(environment: dict | None) -> list[dict]:
    """The starts an ``environment.json`` (as read; None: missing) records, oldest first. A file
    written before the history was kept reads as one entry: its fields, ``started_at_phase`` 0 and an
    unknown (None) date; a missing one as no entry."""
    if not isinstance(environment, dict):
        return []
    if isinstance(environment.get("history"), list):  # entries edited into another shape are left out
        return [
            entry
            for entry in environment["history"]
            if isinstance(entry, dict) and isinstance(entry.get("started_at_phase"), int)
        ]
    return [
        {
            "date": None,
            "started_at_phase": 0,
            "dirty": None if environment.get("git_commit") is None else environment["git_commit"].endswith("-dirty"),
            **{key: environment.get(key) for key in HISTORY_FIELDS},
            "weights_sha256": (environment.get("inputs") or {}).get("weights", {}).get("sha256"),
        }
    ]


def read_environment(path: Path) -> dict | None:
    """``environment.json`` as read, or None when it is missing or unreadable (it is a record, not a
    result: a resume never stops on it)."""
    try:
        return read_json(path) if path.exists() else None
    except DataError:
        return None


def with_start(previous: dict | None, current: dict, phase: int) -> dict:
    """The ``environment.json`` of a start at ``phase``: ``current`` (this start's
    :func:`environment_record`, backbone recipe and ``inputs``) as the top-level fields, and the
    history of ``previous`` (the file as read; None for a new folder, or a missing or unreadable file,
    whose earlier starts are then unknown: ``history_before`` says so) with this start appended."""
    history = environment_history(previous) if phase > 0 else []
    environment = {**current, "history": [*history, start_entry(current, current.get("inputs") or {}, phase)]}
    if phase > 0 and not history:
        environment["history_before"] = f"environment.json was missing or unreadable when phase {phase} began"
    return environment


def history_line(environment: dict | None, completed: int) -> str | None:
    """For ``forgetlab show``: which phases ran under which code and packages, when the starts of a run
    differ in commit, dirty flag, Python, package versions or weights (None when they do not), e.g.
    ``ran in parts that differ: phases 0-1 under commit 1a2b3c4d (torch 2.5.1, Python 3.11.2), phases 2-3
    under commit 5e6f7a8b-dirty (torch 2.6.0, Python 3.11.2) (environment.json's history)``; ``completed``:
    the phases committed."""
    history = environment_history(environment)
    keys = ("git_commit", "python", "packages", "weights_sha256")
    spans, last = [], None
    for index, entry in enumerate(history):
        end = history[index + 1]["started_at_phase"] - 1 if index + 1 < len(history) else completed
        if end < entry["started_at_phase"]:
            continue  # a start that committed nothing (stopped before its first phase ended)
        identity = tuple(repr(entry.get(key)) for key in keys)
        if identity == last:
            spans[-1][1] = end
        else:
            spans.append([entry["started_at_phase"], end, entry])
        last = identity
    if len(spans) < 2:
        return None
    parts = []
    for start, end, entry in spans:
        phases = f"phase {start}" if start == end else f"phases {start}-{end}"
        commit = (entry.get("git_commit") or "unknown")[:8] + ("-dirty" if entry.get("dirty") else "")
        torch_version = (entry.get("packages") or {}).get("torch")
        parts.append(f"{phases} under commit {commit} (torch {torch_version}, Python {entry.get('python')})")
    return "ran in parts that differ: " + ", ".join(parts) + " (environment.json's history)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def weights_file(backbone_config, model) -> Path | None:
    """The file the backbone's weights were read from: ``backbone.weights``, the offline backbone's
    ``model.safetensors``, or timm's file in the Hugging Face cache (None for random weights, or a
    hub file not found in the cache)."""
    if getattr(backbone_config, "random_init", False):
        return None
    if backbone_config.weights:
        return Path(backbone_config.weights)
    if backbone_config.name.startswith("offline_"):
        from forgetlab.models.backbones import offline_backbone_dir

        return offline_backbone_dir(backbone_config.name) / "model.safetensors"
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if pretrained_cfg.get("file"):
        return Path(pretrained_cfg["file"])
    from forgetlab.models.backbones import cached_hub_file

    return cached_hub_file(
        SimpleNamespace(
            hf_hub_id=pretrained_cfg.get("hf_hub_id"), hf_hub_filename=pretrained_cfg.get("hf_hub_filename")
        )
    )


def inputs_record(config, backbone, preprocess) -> dict:
    """``{"preprocess": ..., "weights": ...}`` (JSON) for ``environment.json``: the resolved
    preprocessing (:func:`forgetlab.data.files.resolved_settings`; the offline world's images bring
    their own) and the weights file with its SHA-256 (hex)."""
    path = weights_file(config.backbone, backbone.model)
    weights = (
        {"file": str(path), "sha256": file_sha256(path)}
        if path is not None and path.is_file()
        else {"file": None, "sha256": None}
    )
    if preprocess is None:
        return {"preprocess": {"offline": "the offline world's images, scaled to [-1, 1]"}, "weights": weights}
    return {"preprocess": preprocess.settings, "weights": weights}


def normalisation_note(config, preprocess) -> str | None:
    """One line naming the normalisation when the config did not state it (None when it did, or for
    the offline world), e.g. ``normalisation inferred from timm's pretrained_cfg of
    vit_small_patch16_224.augreg_in21k_ft_in1k: mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5] ...``."""
    if preprocess is None or preprocess.settings.get("normalisation_from") == "config":
        return None
    settings = preprocess.settings
    source = settings["normalisation_from"]
    cfg = settings.get("pretrained_cfg", {})
    if "pretrained_cfg" in source:
        named = ".".join(part for part in (cfg.get("architecture"), cfg.get("tag")) if part)
        source = source.replace("pretrained_cfg", f"timm's pretrained_cfg of {named}")
    untagged = ""
    if (
        config.backbone.weights
        and "." not in config.backbone.name
        and "pretrained_cfg" in settings["normalisation_from"]
    ):
        untagged = (
            f"; backbone.name has no tag, so these are timm's default tag's, "
            f"which {Path(config.backbone.weights).name} may not share"
        )
    return (
        f"normalisation inferred from {source}: mean {settings['mean']}, std {settings['std']} "
        f"(not in the config: set preprocess.mean and preprocess.std to state it{untagged})"
    )
