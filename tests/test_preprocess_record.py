"""A run records what it used beyond its config: the resolved preprocessing and the weights' SHA-256
(environment.json's 'inputs'), and says in its first log line which normalisation it inferred."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from forgetlab import config as config_module
from forgetlab.config import BackboneConfig
from forgetlab.provenance import weights_file
from forgetlab.results import save_safetensors
from forgetlab.runner import run

TINY_VIT = "{patch_size: 4, embed_dim: 16, depth: 1, num_heads: 1}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """ImageNet (3 wnid folders) and CIFAR-100 (3 classes) in their real layouts, a few images each."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i, wnid in enumerate(["n02958343", "n02691156", "n01530575"]):
        for split in ("train", "val"):
            (root / "imagenet" / split / wnid).mkdir(parents=True)
            for j in range(2):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                    root / "imagenet" / split / wnid / f"{i}{j}.JPEG"
                )
    cifar = root / "cifar-100-python"
    cifar.mkdir()
    for split, count in (("train", 6), ("test", 3)):
        data = {
            "data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
            "fine_labels": [i % 3 for i in range(count)],
        }
        (cifar / split).write_bytes(pickle.dumps(data))
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bear", "cloud"]}))
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny ViT's weights in a file, named as a user would give them with a tag-less timm name."""
    from forgetlab.models.backbones import create

    torch.manual_seed(0)
    model = create(
        "vit_small_patch16_224", num_classes=3, img_size=32, patch_size=4, embed_dim=16, depth=1, num_heads=1
    )
    path = tmp_path_factory.mktemp("weights") / "dino_vits16.safetensors"
    save_safetensors(path, model.state_dict())
    return path


def _overrides(data_root, weights, out_dir, name, *extra):
    return [
        f"data.root={data_root}",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        "data.pipeline=pil",
        "backbone.name=vit_small_patch16_224",
        f"backbone.weights={weights}",
        "backbone.image_size=32",
        f"backbone.kwargs={TINY_VIT}",
        "train.max_steps=1",
        "train.batch_size=2",
        "eval.batch_size=8",
        f"out_dir={out_dir}",
        f"name={name}",
        *extra,
    ]


def test_a_run_records_its_inferred_preprocessing_and_weights(data_root, weights, tmp_path):
    lines = []
    config = config_module.resolve({}, _overrides(data_root, weights, tmp_path, "inferred"))
    folder = run(config, log=lines.append)
    # the first line names the normalisation and where it came from: timm's default tag for the name
    assert lines[0].startswith(
        "normalisation inferred from timm's pretrained_cfg of vit_small_patch16_224.augreg_in21k_ft_in1k: "
        "mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5] (not in the config"
    )
    assert "backbone.name has no tag" in lines[0] and "dino_vits16.safetensors" in lines[0]
    assert config_module.parse_yaml(folder.config.read_text())["preprocess"]["mean"] is None  # the config cannot tell
    inputs = json.loads(folder.environment.read_text())["inputs"]
    assert inputs["weights"] == {"file": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    settings = inputs["preprocess"]
    assert (settings["mean"], settings["std"], settings["normalisation_from"]) == (
        [0.5] * 3,
        [0.5] * 3,
        "pretrained_cfg",
    )
    assert (
        settings["pretrained_cfg"]["tag"] == "augreg_in21k_ft_in1k" and settings["pretrained_cfg"]["mean"] == [0.5] * 3
    )
    assert settings["input_size"] == [3, 32, 32] and settings["eval"]["crop_pct"] == 0.9
    # the steps as timm built them: resize to floor(32 / 0.9) = 35
    # bicubic, crop 32; a random-resized crop to 32 in training
    assert settings["eval"]["steps"][:2] == [
        {"step": "Resize", "size": 35, "interpolation": "bicubic", "antialias": True},
        {"step": "CenterCrop", "size": [32, 32]},
    ]
    assert settings["eval"]["steps"][-1] == {"step": "Normalize", "mean": [0.5] * 3, "std": [0.5] * 3}
    crop = settings["train"][0]
    assert (crop["step"], crop["size"], crop["scale"], crop["interpolation"]) == (
        "RandomResizedCropAndInterpolation",
        [32, 32],
        [0.08, 1.0],
        "bicubic",
    )
    assert settings["upstream_eval"]["transform"] == "backbone"
    # not part of the run's identity: the same command finds the folder complete
    again = []
    run(config_module.resolve({}, _overrides(data_root, weights, tmp_path, "inferred")), log=again.append)
    assert again[-1].endswith("is complete (1 tasks); nothing to do")


def test_a_stated_normalisation_is_recorded_without_a_note(data_root, weights, tmp_path):
    lines = []
    imagenet = ["preprocess.mean=[0.485, 0.456, 0.406]", "preprocess.std=[0.229, 0.224, 0.225]"]
    folder = run(
        config_module.resolve({}, _overrides(data_root, weights, tmp_path, "stated", *imagenet)), log=lines.append
    )
    assert not any("normalisation" in line for line in lines)
    settings = json.loads(folder.environment.read_text())["inputs"]["preprocess"]
    assert (settings["mean"], settings["std"], settings["normalisation_from"]) == (
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
        "config",
    )
    # the upstream test set keeps the backbone's own transform
    # (preprocess.upstream_eval=backbone), so its mean stays 0.5
    assert settings["upstream_eval"]["steps"][-1]["mean"] == [0.5] * 3


def test_the_weights_file_of_timm_weights_is_found_in_the_hub_cache(tmp_path, monkeypatch):
    """timm's weights (no backbone.weights) are hashed from the Hugging Face cache file timm read."""
    import huggingface_hub.constants

    from forgetlab.models.backbones import create

    snapshot = tmp_path / "models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = create(
        "vit_small_patch16_224", num_classes=0, img_size=32, patch_size=4, embed_dim=16, depth=1, num_heads=1
    )
    assert weights_file(BackboneConfig(name="vit_small_patch16_224"), model) == snapshot / "model.safetensors"
    assert weights_file(BackboneConfig(name="vit_small_patch16_224", random_init=True), model) is None
