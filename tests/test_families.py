"""The method contract over tiny random timm architectures of six families (timm's own classes:
VisionTransformer as ViT, DeiT III and DINOv2; Eva; Beit; SwinTransformer; ConvNeXt; ResNet):
every method applies, LoRA's adapters are live and merge exactly, top-k follows timm's
group_matcher, block expansion is the identity at insertion; what does not apply is a one-line error."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from forgetlab.errors import ConfigError
from forgetlab.methods import build_method
from forgetlab.config import method_config_from_dict
from forgetlab.models import families
from forgetlab.models.backbones import create
from forgetlab.models.expansion import all_blocks
from forgetlab.models.lora_layers import LoRALinear, lora_layers
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from tests.test_real_data import root  # noqa: F401  (the tiny real-layout datasets)

_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
ARCHITECTURES = {  # id: (timm name, kwargs, family, blocks)
    "vit": ("vit_tiny_patch16_224", _VIT, "vit", 4),
    "deit3": ("deit3_small_patch16_224", _VIT, "vit", 4),
    "dinov2": ("vit_small_patch14_dinov2", dict(_VIT, img_size=28, patch_size=7), "vit", 4),
    "eva02": ("eva02_tiny_patch14_224", dict(_VIT, img_size=28, patch_size=7), "vit", 4),
    "beit": ("beit_base_patch16_224", _VIT, "vit", 4),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2)),
        "swin",
        5,
    ),
    "convnext": ("convnext_atto", dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1)), "convnext", 5),
    "resnet50": ("resnet50", dict(layers=[1, 1, 1, 1], channels=(8, 16, 32, 64), zero_init_last=False), "resnet", 4),
}


def _model(arch: str) -> MultiHeadModel:
    name, kwargs, _, _ = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = MultiHeadModel(create(name, num_classes=5, **kwargs)).eval()
    with torch.no_grad():  # layer scales start near 0 (1e-5, 1e-6), which would hide every change: trained ones are not
        for parameter_name, parameter in model.backbone.named_parameters():
            if parameter_name.rsplit(".", 1)[-1] in ("gamma", "gamma_1", "gamma_2"):
                parameter.fill_(1.0)
    model.add_head("task", 3)
    return model


def _images(model: MultiHeadModel) -> torch.Tensor:
    size = families.example_input(model.backbone).shape
    return torch.randn(4, *size[1:], generator=torch.Generator().manual_seed(1))


def _method(name: str, **options):
    return build_method(method_config_from_dict({"name": name, **options}))


def _outputs(model, images):
    with torch.no_grad():
        return {"features": model.features(images), **model(images, [UPSTREAM, "task"])}


def test_six_timm_classes_and_their_default_targets():
    classes = {type(_model(arch).backbone).__name__ for arch in ARCHITECTURES}
    assert classes == {"VisionTransformer", "Eva", "Beit", "SwinTransformer", "ConvNeXt", "ResNet"}
    for arch, (_, _, family, blocks) in ARCHITECTURES.items():
        backbone = _model(arch).backbone
        assert families.family_of(backbone).name == family
        chosen = families.select_modules(backbone, "default")
        per_block = 2 if family == "convnext" else 1  # mlp.fc1 and mlp.fc2
        assert len(chosen) == per_block * blocks, arch
        assert all(name.endswith(families.family_of(backbone).lora_targets) for name in chosen)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("targets", ["default", "q,v", "all_linear", "all_conv", "re:.*(fc2|conv3)"])
def test_lora_adapters_are_live_and_merge_exactly(arch, targets):
    model = _model(arch)
    method = _method("lora", rank=2, dropout=0.0, targets=targets)
    family = ARCHITECTURES[arch][2]
    if (targets == "q,v" and family in ("convnext", "resnet")) or (
        targets == "all_linear" and arch in ("convnext", "resnet50")
    ):
        # no attention; convnext_atto's MLP is 1x1 convolutions (conv_mlp), and a ResNet's only linear is its head
        with pytest.raises(ConfigError, match="matches no layer"):
            method.check(model.backbone)
        return
    method.check(model.backbone)
    images = _images(model)
    before = _outputs(model, images)
    method.prepare(model, "task")
    layers = lora_layers(model.backbone)
    assert layers and all(not p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for _, layer in layers:
            for b in layer.lora_B.values():
                b.weight.normal_(0, 0.5)
    live = _outputs(model, images)
    change = (live["features"] - before["features"]).abs().max() / before["features"].abs().max()
    assert change > 1e-3  # the adapters are really used (DeiT III's layer scale starts at 1e-5: relative)
    method.finish(model, "task")
    assert not lora_layers(model.backbone)
    merged = _outputs(model, images)
    for output in ("features", UPSTREAM, "task"):
        scale = live[output].abs().max().item()
        assert (merged[output] - live[output]).abs().max().item() <= 1e-5 * max(scale, 1e-3), (arch, output)


def test_beit_reads_qkv_weight_directly_and_the_adapter_serves_that_read():
    """timm's BEiT calls F.linear(x, self.qkv.weight, qkv_bias): a wrapper that only overrides forward
    would be silently skipped. The proof pass sees the read; training moves the output."""
    model = _model("beit")
    qkv = model.backbone.blocks[0].attn.qkv
    assert model.backbone.blocks[0].attn.q_bias is not None  # the F.linear path
    method = _method("lora", rank=2, dropout=0.0)
    method.check(model.backbone)
    method.prepare(model, "task")
    wrapper = model.backbone.blocks[0].attn.qkv
    assert wrapper.base_layer is qkv
    with torch.no_grad():
        wrapper.lora_B["all"].weight.fill_(0.1)
    assert torch.allclose(wrapper.weight, qkv.weight + wrapper.delta_weight(), atol=1e-6)


def test_a_lora_layer_records_its_use_only_while_watched():
    layer = LoRALinear(torch.nn.Linear(4, 6), rank=2, alpha=2)
    layer(torch.ones(1, 4))
    assert not layer.used  # not watched: nothing recorded
    layer.watch_use()
    assert not layer.used
    layer(torch.ones(1, 4))
    assert layer.used  # called
    layer.watch_use()
    assert not layer.used and layer.weight.shape == (6, 4) and layer.used  # its effective weight read


def test_a_layer_the_model_never_uses_is_refused():
    model = _model("vit").backbone
    with pytest.raises(ConfigError, match="never uses blocks.0.attn.qkv"):
        families.check_adaptable(model, ["blocks.0.attn.qkv"], lambda name, module: _Unused(module))


class _Unused(torch.nn.Module):
    """A wrapper the model calls nowhere: it replaces the layer but forwards through a copy."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.used = False

    def watch_use(self) -> None:  # a LoRA layer's interface (LoRALayer.watch_use), with no call to see
        self.used = False

    def forward(self, x):  # pragma: no cover - never reached
        return self.base(x)

    def __call__(self, x):  # skips nn.Module's hooks, as an owner that reads other weights would
        return self.base(x)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_topk_trains_the_last_groups_of_timms_group_matcher(arch):
    model = _model(arch)
    backbone = model.backbone
    classifier = {id(p) for p in backbone.get_classifier().parameters()}
    first_unit = next(
        name
        for name, _ in backbone.named_parameters()
        if name.startswith(("blocks.0.", "layers.0.", "stages.0.", "layer1."))
    )
    sizes = []
    for k in (1, 2):
        _method("topk", k=k).prepare(model, "task")
        trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
        sizes.append(trainable)
        assert not any(id(p) in classifier for p in backbone.parameters() if p.requires_grad)
        assert first_unit not in trainable
    assert sizes[0] < sizes[1]  # k=2 adds a whole group to k=1's
    last = [name for name, p in backbone.named_parameters() if id(p) not in classifier][-1]
    assert last in sizes[0]  # the top of the network always trains
    with pytest.raises(ConfigError, match=r"pick k in 1\.\."):
        _method("topk", k=99).check(backbone)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_expansion_is_the_identity_wherever_there_are_blocks(arch):
    model = _model(arch)
    method = _method("block_expansion", copies=1)
    if ARCHITECTURES[arch][2] == "resnet":
        with pytest.raises(ConfigError, match="needs a sequence of blocks"):
            method.check(model.backbone)
        return
    method.check(model.backbone)
    images = _images(model)
    before = _outputs(model, images)
    depth = len(all_blocks(model.backbone))
    method.prepare(model, "task")
    assert len(all_blocks(model.backbone)) == depth + 1
    after = _outputs(model, images)
    assert all(torch.equal(after[output], before[output]) for output in before)
    trainable = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    inserted = all_blocks(model.backbone)[depth]  # the copy of the last block follows it
    assert set(trainable) == {
        name for name, p in model.backbone.named_parameters() if any(p is q for q in inserted.parameters())
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_linear_and_fullrank(arch):
    model = _model(arch)
    backbone = model.backbone
    _method("full").prepare(model, "task")
    assert all(
        p.requires_grad
        for p in backbone.parameters()
        if not any(p is q for q in backbone.get_classifier().parameters())
    )
    _method("linear").prepare(model, "task")
    assert not any(p.requires_grad for p in backbone.parameters())
    fullrank = _method("fullrank")
    fullrank.prepare(model, "task")
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.weight" for name in families.select_modules(backbone, "default")}


def test_unknown_families_and_bad_patterns_are_one_line_errors():
    mlp = create("mixer_s16_224", num_classes=5, img_size=32)
    with pytest.raises(ConfigError, match="has no default LoRA targets; set method.targets"):
        _method("lora").check(mlp)
    _method("lora", targets="mlp_tokens.fc1").check(mlp)  # a pattern works on any model
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        _method("lora", targets="re:(").check(_model("vit").backbone)
    with pytest.raises(ConfigError, match="only Linear and Conv2d"):
        _method("lora", targets="blocks.0.attn").check(_model("vit").backbone)


@pytest.mark.parametrize(
    "arch,method",
    [
        ("convnext", {"name": "lora", "rank": 2}),
        ("swin", {"name": "block_expansion", "copies": 1}),
        ("eva02", {"name": "topk", "k": 1}),
    ],
)
def test_a_whole_run_on_other_families(root, tmp_path, arch, method):  # noqa: F811
    """Paper 1's pipeline end to end on real-layout files with a ConvNeXt, a Swin and an EVA."""
    from forgetlab import config as config_module

    from forgetlab.runner import run

    name, kwargs, _, _ = ARCHITECTURES[arch]
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k != "img_size"}
    config = config_module.resolve(
        {
            "backbone": {
                "name": name,
                "random_init": True,
                "num_classes": 3,
                "image_size": 32 if arch != "eva02" else 28,
                "kwargs": kwargs,
            },
            "data": {
                "root": str(root),
                "upstream": "imagenet",
                "tasks": ["cifar100", "flowers102"],
                "max_train": 4,
                "max_test": 4,
            },
            "method": method,
            "train": {"max_steps": 2, "batch_size": 2},
            "eval": {"batch_size": 8},
            "save": {"updates": True},
            "out_dir": str(tmp_path),
            "name": arch,
        }
    )
    folder = run(config, log=lambda message: None)
    matrix = folder.read_matrix().as_array()
    assert matrix.shape == (3, 3) and not torch.isnan(torch.tensor(matrix[-1])).any()
    assert folder.completed_tasks() == 2
    np.testing.assert_array_equal(
        run(config, log=lambda message: None).read_matrix().as_array(), matrix
    )  # resumes: nothing to do
    # forgetlab explain on the family's own units: the rows 'all' reproduce the matrix, image for image
    from forgetlab.explanation import explain

    attribution = explain(folder.path, parts="attribution", device="cpu", log=lambda message: None)["attribution"]
    totals = attribution[attribution.unit == "all"].set_index("phase")
    for phase, row in totals.iterrows():
        assert row.reverted_accuracy_pct == pytest.approx(100 * matrix[0][0], abs=1e-9)
        assert row.applied_accuracy_pct == pytest.approx(100 * matrix[phase][0], abs=1e-9)
        assert row.agreement_pct == 100.0
    units = set(attribution.unit) - {"all"}
    expected = {
        "convnext": r"stages\.\d\.blocks\.\d",
        "swin": r"layers\.\d\.blocks\.\d",
        "eva02": r"blocks\.\d|fc_norm",
    }
    assert units and all(re.fullmatch(expected[arch], unit) for unit in units), units
    # top-k trains timm's last parameter group: the last block and the final norm
    if arch == "swin":  # block expansion: the units are the inserted blocks, one per phase
        assert len(units) == 2


@pytest.mark.parametrize("arch", ["swin", "convnext", "eva02"])
def test_adapter_files_load_into_peft_on_other_families(arch, tmp_path):
    """A finished task's adapter (PEFT's format) gives PEFT's model the features forgetlab computed,
    except where timm reads ``qkv.weight`` directly (EVA, BEiT with q/v biases): PEFT's layer is then
    skipped and PEFT computes the bare model. forgetlab's adapter serves that read (and merges)."""
    import copy

    peft = pytest.importorskip("peft")
    from forgetlab.models.adapter_files import save_adapter

    model = _model(arch)
    plain = copy.deepcopy(model.backbone)
    method = _method("lora", rank=2, dropout=0.0)
    method.prepare(model, "task")
    with torch.no_grad():
        for _, layer in lora_layers(model.backbone):
            layer.lora_B["all"].weight.normal_(0, 0.5)
    save_adapter(tmp_path, dict(lora_layers(model.backbone)), task="task", base_model=arch, dropout=0.0)
    theirs = peft.PeftModel.from_pretrained(plain, str(tmp_path)).eval()
    images = _images(model)
    with torch.no_grad():
        ours = model.features(images)
        inner = theirs.base_model.model
        reference = inner.forward_head(inner.forward_features(images), pre_logits=True)
    bare = _outputs(_model(arch), images)["features"]
    assert (ours - bare).abs().max() > 1e-3 * ours.abs().max()  # the adapter changes the features
    expected = bare if arch == "eva02" else ours
    assert (reference - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_all_conv_and_all_linear_skip_layers_lora_cannot_merge_exactly():
    """timm's StdConv2d (ResNetV2, BiT) and Conv2dSame compute their own forward, a grouped conv cannot
    be adapted: all_conv leaves them out instead of refusing the whole backbone."""
    from timm.layers import Conv2dSame, StdConv2d

    from forgetlab.models.families import select_modules

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        StdConv2d(4, 4, 3),
        Conv2dSame(4, 4, 3),
        torch.nn.Conv2d(4, 4, 3, groups=2),
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 4),
    )
    assert select_modules(model, "all_conv") == ["0", "4"]
    assert select_modules(model, "all_linear") == ["6"]
