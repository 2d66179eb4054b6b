"""Weights files load as timm's pretrained path loads the same bytes (position embeddings resampled,
input channels adapted, the classifier kept or dropped by backbone.num_classes), for .safetensors,
torch state dicts and timm training checkpoints; what does not fit is a one-line error."""

from __future__ import annotations

import pytest
import timm
import torch

from forgetlab.config import BackboneConfig
from forgetlab.errors import ConfigError
from forgetlab.models.backbones import load_backbone
from forgetlab.results import save_safetensors

TINY_VIT = {"depth": 1}  # vit_tiny_patch16_224 with one block: 0.2 M parameters


def _save(model: torch.nn.Module, path, kind: str):
    state = model.state_dict()
    if kind == "safetensors":
        save_safetensors(path, state)
    elif kind == "torch":
        torch.save(state, path)
    else:  # a timm training checkpoint (timm/train.py's layout)
        torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": state, "optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def vit64():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64, **TINY_VIT).eval()


@pytest.mark.parametrize("kind, suffix", [("safetensors", ".safetensors"), ("torch", ".pth"), ("timm", ".pth.tar")])
def test_a_vit_file_at_another_size_loads_as_timms_pretrained_path_loads_it(vit64, tmp_path, kind, suffix, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _save(vit64, tmp_path / f"vit64{suffix}", kind)
    loaded = load_backbone(
        BackboneConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=32, kwargs=TINY_VIT)
    ).model
    reference = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        num_classes=5,
        img_size=32,
        **TINY_VIT,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 5},
    )
    assert loaded.pos_embed.shape == (1, 1 + 4, 192) and vit64.pos_embed.shape == (1, 1 + 16, 192)
    expected = reference.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    resampled = timm.layers.resample_abs_pos_embed(vit64.pos_embed, (2, 2), num_prefix_tokens=1)
    assert torch.allclose(loaded.pos_embed, resampled)


def test_a_one_channel_file_feeds_three_channels_as_timm_adapts_them(tmp_path):
    from tests.conftest import random_backbone

    torch.manual_seed(0)
    gray = random_backbone("offline_resnet").eval()  # in_chans=1
    path = _save(gray, tmp_path / "gray.safetensors", "safetensors")
    colour = load_backbone(BackboneConfig(name="offline_resnet", weights=str(path), kwargs={"in_chans": 3})).model
    stem = colour.conv1.weight
    assert stem.shape[1] == 3 and torch.allclose(stem, timm.models.adapt_input_conv(3, gray.conv1.weight, base_chans=1))
    image = torch.rand(2, 1, 28, 28)
    with torch.no_grad():  # a gray image on three channels gives the one-channel model's logits
        assert torch.allclose(colour(image.repeat(1, 3, 1, 1)), gray(image), atol=1e-5)


def test_the_files_classifier_is_kept_dropped_or_refused_by_num_classes(vit64, tmp_path):
    path = str(_save(vit64, tmp_path / "vit64.safetensors", "safetensors"))
    kept = load_backbone(
        BackboneConfig(name="vit_tiny_patch16_224", weights=path, image_size=64, kwargs=TINY_VIT)
    ).model
    headless = load_backbone(
        BackboneConfig(name="vit_tiny_patch16_224", weights=path, image_size=64, num_classes=0, kwargs=TINY_VIT)
    ).model
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(kept(images), vit64(images), atol=1e-6)
        assert headless.num_classes == 0 and torch.allclose(
            headless(images), vit64.forward_head(vit64.forward_features(images), pre_logits=True), atol=1e-6
        )
    with pytest.raises(
        ConfigError, match=r"classifier of 5 classes and backbone.num_classes=7 .*set backbone.num_classes=5"
    ):
        load_backbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, num_classes=7, kwargs=TINY_VIT))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"depth": 1, "embed_dim": 96},
            r"tensor cls_token has shape \(1, 1, 192\) in the file and \(1, 1, 96\) "
            r"in the model as configured; change backbone.name or backbone.kwargs",
        ),
        (
            {"depth": 2},
            r"needs tensor blocks.1.norm1.weight \(192,\) \(12 missing in all\), "
            r"which the file lacks; change backbone.name or backbone.kwargs",
        ),
    ],
)
def test_a_file_no_adaptation_fits_is_one_line_naming_the_tensor_shapes_and_key(vit64, tmp_path, kwargs, message):
    path = str(_save(vit64, tmp_path / "vit64.safetensors", "safetensors"))
    with pytest.raises(ConfigError, match=message) as error:
        load_backbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, kwargs=kwargs))
    assert len(str(error.value).splitlines()) == 1
