"""Shared fixtures. The tests use their own FORGETLAB_HOME (the offline world is built there once per
session, in about 10 s) and tiny random backbones saved to local files, never the pretrained cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="forgetlab-test-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["FORGETLAB_HOME"] = str(_SESSION_HOME)
os.environ["FORGETLAB_PROGRESS"] = "0"
os.environ.setdefault("TIMM_FUSED_ATTN", "0")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def forgetlab_home() -> Path:
    return _SESSION_HOME


def random_backbone(name: str, num_classes: int = 36, **kwargs):
    """A random timm backbone. ResNets get non-zero last BatchNorm gains (timm zero-initialises them,
    which would make a conv3 adapter a no-op and every test of it vacuous)."""
    from forgetlab.models.backbones import create

    if "resnet" in name:
        kwargs.setdefault("zero_init_last", False)
    return create(name, num_classes=num_classes, **kwargs)


@pytest.fixture(scope="session")
def random_backbones(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised offline_vit / offline_resnet with a 36-class upstream head, as local files."""
    from forgetlab.results import save_safetensors

    folder = tmp_path_factory.mktemp("backbones")
    files = {}
    for name in ("offline_vit", "offline_resnet"):
        torch.manual_seed(0)
        model = random_backbone(name)
        files[name] = folder / f"{name}.safetensors"
        save_safetensors(files[name], model.state_dict())
    return files


def tiny_overrides(backbone_file: Path, out_dir: Path, name: str = "tiny", **extra) -> list[str]:
    """A run of a few steps per task on a few dozen images: seconds on a CPU."""
    overrides = {
        "backbone.name": backbone_file.stem,
        "backbone.weights": str(backbone_file),
        "out_dir": str(out_dir),
        "name": name,
        "data.tasks": "[fontfamily, digits]",
        "data.max_train": 48,
        "data.max_test": 40,
        "train.batch_size": 16,
        "train.max_steps": 3,
        "eval.batch_size": 64,
        **extra,
    }
    return [f"{key}={value}" for key, value in overrides.items()]
