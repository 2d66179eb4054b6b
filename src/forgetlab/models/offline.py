"""The two offline backbones: a small timm ``VisionTransformer`` and a small bottleneck ``ResNet``,
the same families as paper 1's ViT-B/16 and ResNet-50, sized for 28x28 grayscale images on a CPU.

Registered with timm's own registry, so ``timm.create_model('offline_vit', num_classes=36)`` builds
them like any timm model. Measured on 2 CPU cores, fp32, batch 128: offline_vit trains at about
850 img/s (evaluates at 2,700), offline_resnet trains at about 1,100 img/s (evaluates at 4,000).
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer


def _model_kwargs(kwargs: dict) -> dict:
    """timm's create_model passes pretrained-config keys that plain constructors do not take."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


# The constructor arguments of each: part of the pretrained backbone's cache key.
OFFLINE_ARGS = {
    "offline_vit": dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0),
    "offline_resnet": dict(
        block=Bottleneck, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, in_chans=1
    ),
}


@register_model
def offline_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT: 28 px, patch 7 (4x4 tokens + class token), width 128, 6 blocks of 4 heads; 1.2 M parameters.

    Patch 7 rather than 4: pretrained the same way, patch 4 at width 96 reached 52 % upstream test
    accuracy in 3 epochs (250 s), patch 7 at width 128 reached 88 % in 5 epochs (176 s), on 2 cores.
    """
    return VisionTransformer(**{**OFFLINE_ARGS["offline_vit"], **_model_kwargs(kwargs)})


@register_model
def offline_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet with one bottleneck per stage, widths 32-256 (out 1024), BatchNorm; 2.0 M parameters."""
    return ResNet(**{**OFFLINE_ARGS["offline_resnet"], **_model_kwargs(kwargs)})


OFFLINE_BACKBONES = ("offline_vit", "offline_resnet")
# How ``forgetlab pretrain`` trains each (``forgetlab.config.TrainConfig`` fields) and its seed: part of
# the cached backbone's key (:func:`forgetlab.caches.offline_backbone_key`), so another recipe is
# another folder.
PRETRAIN_RECIPES = {
    "offline_vit": dict(epochs=5, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.05),
    "offline_resnet": dict(epochs=3, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_fraction=0.1),
}
PRETRAIN_SEED = 0
