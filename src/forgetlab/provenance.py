"""What a run used, beyond its config: the machine and packages, the resolved preprocessing and the
weights' SHA-256 (all in the run folder's ``environment.json``, which :func:`environment_record` and
:func:`inputs_record` fill).

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

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from types import SimpleNamespace

import torch

from forgetlab.results import file_sha256


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
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


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
