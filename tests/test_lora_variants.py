"""LoRA's variants: rsLoRA scaling, DoRA, Gaussian / PiSSA / OLoRA initialisation.

Each variant merges exactly (three merge cycles, every target form), refuses non-finite merges, keeps
PiSSA/OLoRA's invariant (merged = starting weight + learned update), writes an adapter folder that
``peft.PeftModel.from_pretrained`` loads with the same output, matches PEFT's layers (outputs,
gradients, trainable counts), and a DoRA run killed in the middle of a task resumes to the
uninterrupted run's files, matrix included."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from torch import nn

from forgetlab.errors import ConfigError, MergeError
from forgetlab.methods.lora import LoRA, LoRAConfig
from forgetlab.models.adapter_files import load_adapter, save_adapter
from forgetlab.models.lora_layers import LoRALinear, lora_layers, wrap
from forgetlab.models.multihead import MultiHeadModel
from tests.conftest import random_backbone, tiny_overrides

VARIANTS = {
    "rslora": {"scaling": "rslora"},
    "dora": {"dora": True},
    "gaussian": {"init": "gaussian"},
    "pissa": {"init": "pissa"},
    "olora": {"init": "olora"},
    "rslora+dora+pissa": {"scaling": "rslora", "dora": True, "init": "pissa"},
}
TARGET_FORMS = [
    ("offline_vit", "default"),
    ("offline_vit", "q,v"),
    ("offline_vit", "all_linear"),
    ("offline_resnet", "all_conv"),
]
# The offline architectures, narrowed so that 72 merge cycles take seconds (the layers' kinds are the same).
SMALL = {
    "offline_vit": {"depth": 2, "embed_dim": 32, "num_heads": 2},
    "offline_resnet": {"channels": (8, 8, 16, 16), "stem_width": 8},
}
_BACKBONES: dict[str, nn.Module] = {}


def _backbone(name: str) -> nn.Module:
    if name not in _BACKBONES:
        torch.manual_seed(0)
        _BACKBONES[name] = random_backbone(name, **SMALL[name]).eval()
    return copy.deepcopy(_BACKBONES[name])


def _train_a_little(model: nn.Module, seed: int) -> None:
    """What training would do: move every factor (A too, so PiSSA's A leaves A0) and DoRA's magnitudes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for factors in (layer.lora_A, layer.lora_B):
                for module in factors.values():
                    module.weight.add_(torch.randn(module.weight.shape, generator=generator) * 0.05)
            for magnitude in layer.lora_magnitude.values():
                magnitude.mul_(1 + 0.1 * torch.randn(magnitude.shape, generator=generator))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backbone, targets", TARGET_FORMS)
def test_merge_is_exact_over_three_cycles_and_the_weight_is_start_plus_update(variant, backbone, targets):
    model = MultiHeadModel(_backbone(backbone)).eval()
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    method = LoRA(LoRAConfig(rank=2, dropout=0.1, targets=targets, **VARIANTS[variant]))
    with torch.no_grad():
        previous = model(images, ["upstream"])["upstream"]
    for cycle in range(3):
        method.prepare(model, f"task{cycle}")
        model.eval()  # dropout off: the comparison is of the function, not of a noise sample
        layers = dict(lora_layers(model.backbone))
        with torch.no_grad():
            fresh = model(images, ["upstream"])["upstream"]
        assert _relative(fresh, previous) < 1e-6, "a fresh adapter must leave the function unchanged"
        _train_a_little(model, seed=cycle)
        start = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
        with torch.no_grad():
            live = model(images, ["upstream"])["upstream"]
        method.finish(model, f"task{cycle}")
        assert not lora_layers(model)
        with torch.no_grad():
            merged = model(images, ["upstream"])["upstream"]
        assert _relative(merged, live) < 1e-5, cycle
        assert _relative(live, previous) > 1e-3, "the update changed the function (the test is not vacuous)"
        for name, layer in layers.items():  # PiSSA/OLoRA move nothing out of W for good: start + s (B A - B0 A0)
            update = torch.zeros_like(start[name])
            for slice_name, (lo, hi) in layer.out_slices.items():
                a, b = layer.lora_A[slice_name].weight, layer.lora_B[slice_name].weight
                product = b.flatten(1) @ a.flatten(1)
                if layer.initial_factors(slice_name) is not None:
                    a0, b0 = layer.initial_factors(slice_name)
                    product = product - b0.flatten(1) @ a0.flatten(1)
                update[lo:hi] = product.reshape(hi - lo, *start[name].shape[1:]) * layer.scaling
            expected = start[name] + update
            if layer.dora:
                for slice_name, (lo, hi) in layer.out_slices.items():
                    norms = expected[lo:hi].flatten(1).norm(dim=1)
                    expected[lo:hi] *= (layer.lora_magnitude[slice_name] / norms).view(-1, *[1] * (expected.dim() - 1))
            assert torch.allclose(model.backbone.get_submodule(name).weight, expected, atol=1e-6), name
            if targets == "q,v":  # the key rows never change, whatever the variant
                dim = start[name].shape[0] // 3
                assert torch.equal(model.backbone.get_submodule(name).weight[dim : 2 * dim], start[name][dim : 2 * dim])
        previous = merged


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keep_policy_leaves_the_backbone_and_its_adapter_files_reload_bit_for_bit(variant, tmp_path):
    for backbone, targets in (("offline_vit", "q,v"), ("offline_resnet", "default")):
        model = MultiHeadModel(_backbone(backbone))
        model.add_head("task", 5)
        before = {name: value.clone() for name, value in model.backbone.state_dict().items()}
        method = LoRA(LoRAConfig(rank=2, targets=targets, policy="keep", **VARIANTS[variant]))
        method.prepare(model, "task")
        _train_a_little(model, seed=4)
        model.eval()
        images = torch.randn(3, 1, 28, 28)
        with torch.no_grad():
            live = model(images, ["task"])["task"]
        method.finish(model, "task")
        method.save_task("task", tmp_path / backbone)
        assert all(torch.equal(value, before[name]) for name, value in model.backbone.state_dict().items()), (
            "keep changed W"
        )
        restored = LoRA(method.config)
        restored.restore(model, [("task", "task")], tmp_path / backbone)
        with torch.no_grad(), restored.evaluating(model, "task"):
            model.eval()  # the reloaded adapters are new modules (as predict() does before scoring)
            assert torch.equal(model(images, ["task"])["task"], live)
        folder = tmp_path / backbone / "adapters" / "task"
        peft_config = json.loads((folder / "adapter_config.json").read_text())
        assert peft_config["use_dora"] == VARIANTS[variant].get("dora", False)
        assert peft_config["use_rslora"] == (VARIANTS[variant].get("scaling") == "rslora")
        peft = pytest.importorskip("peft")  # the q,v (sliced) and conv3 adapters load into PEFT too
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(model.backbone), str(folder)).eval()
        with torch.no_grad(), restored.evaluating(model, "task"):
            model.eval()
            assert (
                _relative(theirs.base_model.model.forward_features(images), model.backbone.forward_features(images))
                < 1e-5
            )


@pytest.mark.parametrize("variant", ["dora", "pissa", "rslora"])
def test_a_non_finite_merge_is_refused_and_the_model_is_unchanged(variant):
    model = MultiHeadModel(_backbone("offline_resnet"))
    method = LoRA(LoRAConfig(rank=2, **VARIANTS[variant]))
    method.prepare(model, "t")
    first = lora_layers(model)[0][1]
    if first.dora:
        first.lora_magnitude["all"].data[0] = float("nan")
    else:
        first.lora_B["all"].weight.data.fill_(float("inf"))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(MergeError, match="non-finite"):
        method.finish(model, "t")
    assert len(lora_layers(model)) == 4  # every conv3 still wrapped: nothing was merged
    assert all(
        torch.equal(value, state[name]) or not value.isfinite().all() for name, value in model.state_dict().items()
    )


def test_bad_variant_options_are_one_line_config_errors():
    for options, message in (
        ({"scaling": "sqrt"}, "^method.scaling must be one of: standard, rslora; got 'sqrt'$"),
        ({"init": "loftq"}, "^method.init must be one of: kaiming, gaussian, pissa, olora; got 'loftq'$"),
        ({"dora": "yes"}, "method.dora must be true or false"),
    ):
        with pytest.raises(ConfigError, match=message):
            LoRA(LoRAConfig(**options))
    model = MultiHeadModel(_backbone("offline_vit"))
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.qkv.*needs rank <= min\(out, in\) = 32"):
        LoRA(LoRAConfig(rank=40, init="pissa")).check(model.backbone)


def test_default_is_plain_lora_and_gaussian_draws_like_peft():
    torch.manual_seed(7)
    plain = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0)
    assert (plain.scaling, plain.dora, plain.init, len(plain.lora_magnitude)) == (2.0, False, "kaiming", 0)
    assert not [name for name, _ in plain.named_buffers()]
    gaussian = LoRALinear(nn.Linear(256, 8), rank=4, alpha=8.0, init="gaussian")
    weights = gaussian.lora_A["all"].weight
    assert abs(weights.std().item() - 1 / 4) < 0.02 and torch.count_nonzero(gaussian.lora_B["all"].weight) == 0
    rs = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8.0, scaling="rslora")
    assert rs.scaling == 8.0 / 2


def test_anatomy_lists_each_variants_trainable_parameters():
    """``forgetlab anatomy``: rsLoRA and PiSSA train what plain LoRA trains; DoRA adds one magnitude per
    adapted output row (ViT qkv: 3 x 128 per block) or output channel (ResNet conv3)."""
    from forgetlab import config as config_module
    from forgetlab.method_anatomy import anatomy

    vit = anatomy(config_module.resolve({}, ["backbone.name=offline_vit"]))
    plain = next(row.trainable for row in vit.methods if row.method.startswith("lora("))
    rows = {row.method.split("policy=merge, ")[1]: row for row in vit.lora_variants}
    assert rows["scaling=rslora, dora=False, init=kaiming)"].trainable == plain == 6 * 4 * (128 + 384)
    assert rows["scaling=standard, dora=True, init=kaiming)"].trainable == plain + 6 * 384
    assert rows["scaling=standard, dora=False, init=pissa)"].trainable == plain
    assert (
        "(2,304 values)" in rows["scaling=standard, dora=True, init=kaiming)"].note
        and "LoRA's variants" in vit.format()
    )
    resnet = anatomy(config_module.resolve({}, ["backbone.name=offline_resnet", "method.dora=true"]))
    dora = next(row for row in resnet.methods if row.method.startswith("lora("))
    conv3s = [m for n, m in random_backbone("offline_resnet").named_modules() if n.endswith("conv3")]
    assert dora.trainable == sum(4 * (c.in_channels + c.out_channels) + c.out_channels for c in conv3s)
    assert f"({sum(c.out_channels for c in conv3s):,} values)" in dora.note


# ------------------------------------------------------------------------------- parity with PEFT
peft = pytest.importorskip("peft")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 9)
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, x, image):
        return self.fc(x), self.conv(image)


PEFT_INIT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def _peft_layer(model, name):
    return model.base_model.model.get_submodule(name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_peft_outputs_gradients_counts_and_loading(variant, tmp_path):
    """PEFT's layers given forgetlab's weights compute the same outputs and gradients (DoRA's norm is
    detached in both: DoRA section 4.3), count the same trainable parameters, start from the same
    PiSSA/OLoRA factors and DoRA magnitudes, and PEFT loads forgetlab's adapter folder with the same
    output. PEFT has no PiSSA/OLoRA for convolutions: there only the folder is compared."""
    options = VARIANTS[variant]
    init = options.get("init", "kaiming")
    principal = init in ("pissa", "olora")
    torch.manual_seed(0)
    reference = _Tiny()
    ours = copy.deepcopy(reference)
    ours.fc = wrap(ours.fc, 3, 6.0, 0.0, **options)
    ours.conv = wrap(ours.conv, 3, 6.0, 0.0, **options)
    compared = ["fc"] if principal else ["fc", "conv"]
    config = peft.LoraConfig(
        r=3,
        lora_alpha=6,
        lora_dropout=0.0,
        target_modules=compared,
        use_rslora=options.get("scaling") == "rslora",
        use_dora=options.get("dora", False),
        init_lora_weights=PEFT_INIT[init],
    )
    theirs = peft.get_peft_model(copy.deepcopy(reference), config)
    ours_count = sum(p.numel() for name in compared for p in getattr(ours, name).parameters() if p.requires_grad)
    assert theirs.get_nb_trainable_parameters()[0] == ours_count
    for name in compared:
        layer, their = getattr(ours, name), _peft_layer(theirs, name)
        assert their.scaling["default"] == pytest.approx(layer.scaling)
        if principal:  # the same principal factors (signs included: the same decomposition)
            assert torch.allclose(their.lora_A["default"].weight, layer.lora_A["all"].weight, atol=1e-5)
            assert torch.allclose(their.lora_B["default"].weight, layer.lora_B["all"].weight, atol=1e-5)
        if layer.dora:
            assert torch.allclose(
                their.lora_magnitude_vector["default"].weight.flatten(), layer.lora_magnitude["all"], atol=1e-6
            )
    _train_a_little(ours, seed=1)
    with torch.no_grad():
        for name in compared:
            layer, their = getattr(ours, name), _peft_layer(theirs, name)
            their.lora_A["default"].weight.copy_(layer.lora_A["all"].weight)
            their.lora_B["default"].weight.copy_(layer.lora_B["all"].weight)
            if layer.dora:
                magnitude = their.lora_magnitude_vector["default"].weight
                magnitude.copy_(layer.lora_magnitude["all"].view(magnitude.shape))
    x, image = torch.randn(5, 12), torch.randn(2, 3, 6, 6)
    ours_out, theirs_out = ours(x, image), theirs(x, image)
    for index, name in enumerate(("fc", "conv")):
        if name in compared:
            assert torch.allclose(ours_out[index], theirs_out[index], atol=1e-5), name
    sum(out.square().sum() for out, name in zip(ours_out, ("fc", "conv")) if name in compared).backward()
    sum(out.square().sum() for out, name in zip(theirs_out, ("fc", "conv")) if name in compared).backward()
    for name in compared:
        layer, their = getattr(ours, name), _peft_layer(theirs, name)
        assert torch.allclose(
            layer.lora_A["all"].weight.grad, their.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-5
        )
        assert torch.allclose(
            layer.lora_B["all"].weight.grad, their.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-5
        )
        if layer.dora:
            their_grad = their.lora_magnitude_vector["default"].weight.grad.flatten()
            assert torch.allclose(layer.lora_magnitude["all"].grad, their_grad, rtol=1e-4, atol=1e-5)

    save_adapter(tmp_path, {"fc": ours.fc, "conv": ours.conv}, task="t", base_model="", dropout=0.0)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path).eval()
    with torch.no_grad():
        for ours_value, loaded_value in zip(ours(x, image), loaded(x, image)):
            assert torch.allclose(ours_value, loaded_value, atol=1e-5)
    if principal:  # written as PEFT's conversion writes PiSSA/OLoRA: plain LoRA of twice the rank
        written = json.loads((tmp_path / "adapter_config.json").read_text())
        assert (written["r"], written["init_lora_weights"]) == (6, True)
    back = load_adapter(tmp_path, reference)
    with torch.no_grad():
        assert torch.equal(back["fc"](x), ours.fc(x)) and torch.equal(back["conv"](image), ours.conv(image))


# ------------------------------------------------------------------------------- a DoRA run killed mid-task
def test_a_dora_run_killed_in_the_middle_of_a_task_resumes_to_the_uninterrupted_files(random_backbones, tmp_path):
    """SIGKILL a real child process mid-training of the second DoRA task (q,v slices, with LwF and replay),
    and among that task's commit writes; resume each; compare with an uninterrupted run
    (tests/kill_trials.py's snapshot: every committed file and array, the matrix included). A fresh
    interpreter forks the children, as kill_trials.py does (a fork after OpenMP has started can hang)."""
    import subprocess
    import sys
    from pathlib import Path

    overrides = tiny_overrides(
        random_backbones["offline_vit"],
        tmp_path,
        **{
            "method.dora": "true",
            "method.rank": 2,
            "method.targets": "q,v",
            "train.max_steps": 2,
            "lwf.alpha": 5,
            "replay.size": 30,
            "replay.batch_size": 8,
        },
    )
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_lora_variants", str(tmp_path), *overrides],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["clean_has_second_dora_adapter"]
    assert summary["kills"] == {"mid_training": -signal.SIGKILL, "mid_commit": -signal.SIGKILL}
    assert summary["completed_after_kill"]["mid_training"] == 1  # killed inside task 2, after task 1's commit
    assert summary["identical"] == {"mid_training": True, "mid_commit": True}, summary


def _untimed(value):
    """A snapshot without wall-clock fields (any ``*seconds`` / ``*per_second`` key, whatever its name)."""
    if isinstance(value, dict):
        return {
            k: _untimed(v)
            for k, v in value.items()
            if not (isinstance(k, str) and ("seconds" in k or "per_second" in k))
        }
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _kill_trials(out, overrides: list[str]) -> dict:
    """The driver of the test above, run in its own interpreter (``python -m tests.test_lora_variants``)."""
    from forgetlab import config as config_module
    from forgetlab import results
    from forgetlab.runner import run
    from tests import kill_trials  # sets torch to one thread (none of these imports runs an operation)

    configs = {
        name: config_module.resolve({}, [*overrides, f"out_dir={out}", f"name={name}"])
        for name in ("clean", "mid_training", "mid_commit")
    }
    count_file = out / "points"
    os.environ["FORGETLAB_CRASH_COUNT"] = str(count_file)
    assert kill_trials._child(configs["clean"], None) == 0, "the uninterrupted run failed"
    os.environ.pop("FORGETLAB_CRASH_COUNT")
    reference = kill_trials.snapshot(out / "clean")

    def killed_after_steps(config, steps: int) -> int:
        pid = os.fork()
        if pid == 0:  # the child SIGKILLs itself after `steps` optimiser steps (the first task takes 2)
            taken = [0]

            def count(optimizer, args, kwargs):
                taken[0] += 1
                if taken[0] == steps:
                    os.kill(os.getpid(), signal.SIGKILL)

            from torch.optim.optimizer import register_optimizer_step_post_hook

            register_optimizer_step_post_hook(count)
            try:
                run(config, log=lambda message: None)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    kills = {
        "mid_training": killed_after_steps(configs["mid_training"], 3),
        "mid_commit": kill_trials._child(configs["mid_commit"], int(count_file.read_text()) - 3),
    }  # among task 2's commit writes
    completed = {name: json.loads((out / name / "progress.json").read_text())["completed_tasks"] for name in kills}
    identical = {}
    for name in kills:
        resumed = kill_trials._child(configs[name], None)
        leftovers = list((out / name).rglob(f"*{results.PARTIAL_SUFFIX}"))
        identical[name] = (
            resumed == 0 and not leftovers and _untimed(kill_trials.snapshot(out / name)) == _untimed(reference)
        )
    return {
        "clean_has_second_dora_adapter": "adapters/digits/adapter_model.safetensors" in reference["files"],
        "kills": kills,
        "completed_after_kill": completed,
        "identical": identical,
    }


@pytest.mark.parametrize("timm_name, size", [("beit_base_patch16_224", 32), ("eva02_tiny_patch14_224", 28)])
def test_variants_through_the_weight_read_of_beit_and_eva(timm_name, size):
    """BEiT and EVA read ``qkv.weight`` instead of calling the layer: the adapter's effective weight
    carries every variant there too (DoRA's rescaling, PiSSA's subtraction), and merges exactly."""
    from forgetlab.models.backbones import create

    torch.manual_seed(0)
    backbone = create(timm_name, num_classes=5, img_size=size, patch_size=size // 4, embed_dim=32, depth=2, num_heads=2)
    with torch.no_grad():  # layer scales start near 0 and would hide every change (as in tests/test_families.py)
        for name, parameter in backbone.named_parameters():
            if name.rsplit(".", 1)[-1] in ("gamma", "gamma_1", "gamma_2"):
                parameter.fill_(1.0)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for targets in ("default", "q,v"):
        model = MultiHeadModel(copy.deepcopy(backbone)).eval()
        method = LoRA(LoRAConfig(rank=2, targets=targets, **VARIANTS["rslora+dora+pissa"]))
        method.check(model.backbone)  # every adapter is used through its weight read
        method.prepare(model, "t")
        _train_a_little(model, seed=2)
        model.eval()
        with torch.no_grad():
            live = model(images, ["upstream"])["upstream"]
        method.finish(model, "t")
        with torch.no_grad():
            merged = model(images, ["upstream"])["upstream"]
            bare = MultiHeadModel(copy.deepcopy(backbone)).eval()(images, ["upstream"])["upstream"]
        assert _relative(merged, live) < 1e-5 and _relative(live, bare) > 1e-3, targets


if __name__ == "__main__":
    import sys
    from pathlib import Path

    print(json.dumps(_kill_trials(Path(sys.argv[1]), sys.argv[2:])))
