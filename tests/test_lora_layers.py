"""LoRA layers: merge exactness (PEFT's invariant), parity with PEFT itself, and safe merging."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from forgetlab.errors import ConfigError, MergeError
from forgetlab.methods.lora import LoRA, LoRAConfig
from forgetlab.models.lora_layers import LoRAConv2d, LoRALinear, lora_layers, merge_lora, wrap
from forgetlab.models.multihead import MultiHeadModel
from tests.conftest import random_backbone


def _randomise_adapters(model: nn.Module, seed: int) -> None:
    """Fresh adapters are a no-op (B = 0); give B values so the merge has something to fold in."""
    generator = torch.Generator().manual_seed(seed)
    for _, layer in lora_layers(model):
        for b in layer.lora_B.values():
            b.weight.data = torch.randn(b.weight.shape, generator=generator) * 0.05


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", ["offline_vit", "offline_resnet"])
def test_merged_logits_equal_live_adapter_over_two_tasks(name):
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone(name)).eval()
    images = torch.randn(8, 1, 28, 28)
    method = LoRA(LoRAConfig(rank=4, dropout=0.1))
    originals = []
    for task in range(2):
        method.prepare(model, f"task{task}")
        _randomise_adapters(model, seed=task)
        model.eval()  # dropout off: the comparison is of the function, not of a noise sample
        with torch.no_grad():
            live = model(images, ["upstream"])["upstream"]
        originals.append(live)
        method.finish(model, f"task{task}")
        assert not lora_layers(model), "the merge unwraps every adapter"
        with torch.no_grad():
            merged = model(images, ["upstream"])["upstream"]
        assert _relative_difference(merged, live) < 1e-5
    # The second task's update really changed the function (the test is not vacuous).
    assert _relative_difference(originals[1], originals[0]) > 1e-3


def test_qv_adapter_leaves_key_rows_untouched_after_merge():
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone("offline_vit"))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    method = LoRA(LoRAConfig(rank=2, targets="q,v"))
    method.prepare(model, "t")
    _randomise_adapters(model, seed=3)
    method.finish(model, "t")
    dim = model.backbone.embed_dim
    for index in range(len(model.backbone.blocks)):
        key = f"blocks.{index}.attn.qkv.weight"
        after = model.backbone.get_parameter(key)
        assert torch.equal(after[dim : 2 * dim], before[key][dim : 2 * dim]), "key rows changed"
        assert not torch.equal(after[:dim], before[key][:dim]), "query rows did not change"
        assert not torch.equal(after[2 * dim :], before[key][2 * dim :]), "value rows did not change"


def test_merge_refuses_non_finite_weights_and_leaves_model_unchanged():
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone("offline_vit"))
    method = LoRA(LoRAConfig(rank=2))
    method.prepare(model, "t")
    first = lora_layers(model)[0][1]
    first.lora_B["all"].weight.data.fill_(float("inf"))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(MergeError, match="non-finite"):
        merge_lora(model)
    assert len(lora_layers(model)) == len(model.backbone.blocks), "adapters must still be live"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]) or (value.isinf().all() and state[key].isinf().all())


def test_conv_delta_weight_matches_the_composed_convolutions():
    torch.manual_seed(0)
    base = nn.Conv2d(6, 5, kernel_size=3, padding=1, bias=False)
    layer = LoRAConv2d(base, rank=2, alpha=3.0)
    layer.lora_B["all"].weight.data.normal_()
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        expected = layer(x)
        merged = nn.functional.conv2d(x, layer.merged_weight(), padding=1)
    assert _relative_difference(merged, expected) < 1e-5


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_merge_is_exact_over_every_attribute_that_shapes_the_output(padding_mode):
    """Live == merged for every padding mode, with and without bias, dilation, stride and 'same' padding:
    the adapter sees the input exactly as the base convolution does."""
    x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))
    for bias in (True, False):
        for dilation, stride, padding in ((1, 1, 1), (2, 1, 2), (1, 2, 1), (2, 1, "same")):
            torch.manual_seed(0)
            container = nn.Sequential(
                nn.Conv2d(4, 6, 3, stride, padding, dilation, bias=bias, padding_mode=padding_mode)
            )
            container[0] = LoRAConv2d(container[0], rank=2, alpha=4.0)
            container[0].lora_B["all"].weight.data.normal_()
            with torch.no_grad():
                live = container(x)
                base_only = container[0].base_layer(x)
                merge_lora(container)
                merged = container(x)
            assert isinstance(container[0], nn.Conv2d) and container[0].padding_mode == padding_mode
            assert _relative_difference(merged, live) < 1e-6, (bias, dilation, stride, padding)
            assert _relative_difference(live, base_only) > 1e-2  # the update is not vacuous


def _weight_normed() -> nn.Module:
    return torch.nn.utils.weight_norm(nn.Linear(4, 4))


def _parametrised() -> nn.Module:
    return torch.nn.utils.parametrizations.orthogonal(nn.Linear(4, 4))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: nn.Conv2d(4, 8, 3, groups=2), "grouped convolution"),
        (lambda: nn.Conv2d(4, 4, 3, groups=4), "grouped convolution"),
        (lambda: __import__("timm").layers.StdConv2d(4, 4, 3), "computes its own forward"),
        (lambda: __import__("timm").layers.Conv2dSame(4, 4, 3, stride=2), "computes its own forward"),
        (_weight_normed, "forward hooks"),
        (_parametrised, "parametrised"),
        (lambda: nn.Conv1d(4, 4, 3), "supports nn.Linear and nn.Conv2d"),
    ],
)
def test_layers_lora_cannot_merge_exactly_are_refused_in_one_line(make, reason):
    with pytest.raises(ConfigError, match=reason) as error:
        wrap(make(), rank=2, alpha=4.0, dropout=0.0, name="blocks.0.conv")
    assert "blocks.0.conv" in str(error.value) and "\n" not in str(error.value)
    if isinstance(make(), nn.Conv2d):
        with pytest.raises(ConfigError, match=reason):
            LoRAConv2d(make(), rank=2, alpha=4.0)


def test_timm_linear_is_adapted_like_nn_linear():
    from timm.layers import Linear

    layer = wrap(Linear(6, 5), rank=2, alpha=4.0, dropout=0.0)
    assert isinstance(layer, LoRALinear)


# ------------------------------------------------------------------------------- parity with PEFT
peft = pytest.importorskip("peft")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 9)
        self.conv = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x, image):
        return self.fc(x), self.conv(image)


def test_parity_with_peft_outputs_merge_and_adapter_file():
    torch.manual_seed(0)
    reference = _Tiny()
    ours = copy.deepcopy(reference)
    ours.fc = LoRALinear(ours.fc, rank=3, alpha=6.0)
    ours.conv = LoRAConv2d(ours.conv, rank=3, alpha=6.0)
    for layer in (ours.fc, ours.conv):
        layer.lora_B["all"].weight.data.normal_()

    config = peft.LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0, target_modules=["fc", "conv"])
    theirs = peft.get_peft_model(copy.deepcopy(reference), config)
    # Our adapter, written with PEFT's key names, loads into PEFT unchanged.
    adapter = {
        f"base_model.model.{name}.{part}.weight": getattr(getattr(ours, name), part)["all"].weight
        for name in ("fc", "conv")
        for part in ("lora_A", "lora_B")
    }
    result = peft.set_peft_model_state_dict(theirs, adapter)
    assert not [k for k in result.unexpected_keys if "lora" in k]

    x, image = torch.randn(5, 12), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ours_fc, ours_conv = ours(x, image)
        theirs_fc, theirs_conv = theirs(x, image)
    assert torch.allclose(ours_fc, theirs_fc, atol=1e-6)
    assert torch.allclose(ours_conv, theirs_conv, atol=1e-6)

    peft_merged = theirs.merge_and_unload(safe_merge=True)
    merge_lora(ours)
    assert torch.allclose(ours.fc.weight, peft_merged.fc.weight, atol=1e-6)
    assert torch.allclose(ours.conv.weight, peft_merged.conv.weight, atol=1e-6)


def test_default_init_matches_peft_distribution():
    """Same seed, same init: A Kaiming-uniform(a=sqrt 5) like nn.Linear's default, B zero."""
    torch.manual_seed(7)
    ours = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0)
    assert torch.count_nonzero(ours.lora_B["all"].weight) == 0
    bound = 1 / 16**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 16
    weights = ours.lora_A["all"].weight
    assert weights.abs().max() <= bound and weights.std() > bound / 4
