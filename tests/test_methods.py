"""Contract tests over every registered method, then each method's own invariants and the published
trainable-parameter counts on real-size timm architectures."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import TensorDataset

from forgetlab import config as config_module
from forgetlab.config import TrainConfig
from forgetlab.errors import ConfigError
from forgetlab.methods import method_names
from forgetlab.methods import build_method
from forgetlab.models.expansion import expand_blocks, expanded_architecture
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runner import run
from forgetlab.runtime import Runtime
from forgetlab.train import count_parameters, train_task, trainable_parameters
from tests.conftest import random_backbone, tiny_overrides

CPU = torch.device("cpu")
# Options that make each method do something on the 6-block offline ViT / 4-stage offline ResNet.
OPTIONS = {"topk": {"k": 2}, "block_expansion": {"copies": 2}, "lora": {"rank": 2}}


def _method(name: str, **options):
    return build_method(config_module.method_config_from_dict({"name": name, **OPTIONS.get(name, {}), **options}))


def _images(count: int = 32, classes: int = 5, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(count, 1, 28, 28, generator=generator), torch.randint(0, classes, (count,), generator=generator)
    )


def _train_one_task(model: MultiHeadModel, method, task: str = "task", steps: int = 3, lr: float = 1e-2):
    head = model.add_head(task, 5)
    method.prepare(model, task)
    model.heads.requires_grad_(False)
    head.requires_grad_(True)
    model.upstream_head.requires_grad_(False)
    train_task(model, task, _images(), TrainConfig(batch_size=16, max_steps=steps, lr=lr), Runtime(), seed=0)
    method.finish(model, task)
    model.requires_grad_(False)


def _applies(method_name: str, backbone: str) -> bool:
    return not (method_name == "block_expansion" and "resnet" in backbone)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


# ----------------------------------------------------------------------------- the contract, every method
@pytest.mark.parametrize("backbone", ["offline_vit", "offline_resnet"])
@pytest.mark.parametrize("method_name", method_names())
def test_every_method_keeps_the_contract(method_name, backbone):
    """Whatever a method does: the upstream head, earlier heads and BatchNorm statistics never move,
    the task head learns, the config documents every option, and a finished model is a plain timm
    model again (no wrapper modules left behind)."""
    for field in config_module.dataclasses.fields(_method(method_name).Config):
        assert field.metadata.get("help"), f"{method_name}.{field.name} has no help text"
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone(backbone))
    method = _method(method_name)
    if not _applies(method_name, backbone):
        with pytest.raises(ConfigError, match="needs a sequence of blocks"):
            method.check(model.backbone)
        return
    method.check(model.backbone)
    model.add_head("earlier", 3)
    before = _snapshot(model)
    _train_one_task(model, method)
    after = model.state_dict()
    assert not any("lora" in name or "base_layer" in name for name in after), "a wrapper survived finish()"
    for name in before:
        if name.startswith(("heads.earlier.", "backbone.head.", "backbone.fc.")) or "running_" in name:
            assert torch.equal(before[name], after[name]), f"{method_name} changed {name}"
    assert not torch.equal(model.heads["task"].weight, torch.zeros_like(model.heads["task"].weight))
    changed_backbone = [
        n for n in before if n.startswith("backbone.") and n in after and not torch.equal(before[n], after[n])
    ]
    if method_name == "linear":
        assert changed_backbone == []
    elif method_name != "block_expansion":  # expansion trains new tensors only; checked below
        assert changed_backbone, f"{method_name} left the backbone unchanged"


RESUMED = [
    [f"method.name={name}"] + [f"method.{k}={v}" for k, v in OPTIONS.get(name, {}).items()] for name in method_names()
]
RESUMED += [["method.policy=keep"], ["lwf.alpha=5", "replay.size=30", "replay.batch_size=8"]]


@pytest.mark.parametrize("extra", RESUMED, ids=" ".join)
def test_every_method_resumes_to_the_uninterrupted_result(extra, random_backbones, tmp_path):
    """Stop after task 1, rerun: the same matrix and predictions as one uninterrupted run (the stored
    adapters of ``keep`` and the expanded blocks are rebuilt from the run folder)."""
    overrides = [*tiny_overrides(random_backbones["offline_vit"], tmp_path), *extra]
    whole = run(config_module.load(None, [*overrides, "name=whole"]), log=lambda message: None)
    part_config = config_module.load(None, [*overrides, "name=part"])

    def die_after_first_task(message: str) -> None:
        if message.startswith("task 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(part_config, log=die_after_first_task)
    part = run(part_config, log=lambda message: None)
    assert np.array_equal(whole.read_matrix().as_array(), part.read_matrix().as_array(), equal_nan=True)
    assert np.array_equal(whole.read_predictions(2)["predictions"], part.read_predictions(2)["predictions"])


# ----------------------------------------------------------------------------- linear, top-k, full
def test_linear_probe_leaves_every_backbone_tensor_bit_identical():
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone("offline_resnet"))
    before = _snapshot(model.backbone)
    _train_one_task(model, _method("linear"), steps=5, lr=0.1)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "backbone,k,allowed",
    [
        ("offline_vit", 2, ("blocks.4.", "blocks.5.", "norm.")),
        ("offline_resnet", 1, ("layer4.",)),
        ("offline_resnet", 2, ("layer3.", "layer4.")),
    ],
)
def test_topk_changes_only_the_last_k_blocks_and_the_final_norm(backbone, k, allowed):
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone(backbone))
    before = _snapshot(model.backbone)
    _train_one_task(model, _method("topk", k=k))
    changed = {n for n, t in model.backbone.state_dict().items() if not torch.equal(t, before[n])}
    assert changed and all(n.startswith(allowed) for n in changed), sorted(changed)
    assert {prefix for prefix in allowed if any(n.startswith(prefix) for n in changed)} == set(allowed)


def test_topk_refuses_more_blocks_than_the_backbone_has():
    with pytest.raises(ConfigError, match="pick k in 1..4"):
        _method("topk", k=5).check(random_backbone("offline_resnet"))


# ----------------------------------------------------------------------------- block expansion
def test_block_expansion_is_the_identity_at_init_then_trains_only_new_blocks_and_round_trips(tmp_path):
    torch.manual_seed(0)
    original = random_backbone("offline_vit").eval()
    model = MultiHeadModel(copy.deepcopy(original))
    images = torch.randn(4, 1, 28, 28)
    inserted = expand_blocks(model.backbone, copies=2)
    assert inserted == [3, 7] and len(model.backbone.blocks) == 8  # after blocks 2 and 5 of 6
    with torch.no_grad():
        assert torch.allclose(model.backbone(images), original(images), rtol=0, atol=1e-6)
        assert torch.allclose(
            model.backbone.forward_features(images), original.forward_features(images), rtol=0, atol=1e-6
        )

    model = MultiHeadModel(copy.deepcopy(original))
    _train_one_task(model, _method("block_expansion", copies=2))
    expanded = model.backbone.state_dict()
    # The original blocks moved to new indices: 0,1,2 -> 0,1,2 and 3,4,5 -> 4,5,6.
    old_index = {0: 0, 1: 1, 2: 2, 4: 3, 5: 4, 6: 5}
    reference = original.state_dict()
    for name, tensor in expanded.items():
        if name.startswith("blocks."):
            index = int(name.split(".")[1])
            if index in old_index:
                assert torch.equal(
                    tensor, reference[name.replace(f"blocks.{index}.", f"blocks.{old_index[index]}.", 1)]
                )
        else:
            assert torch.equal(tensor, reference[name]), name
    for index in (3, 7):
        assert not torch.equal(
            expanded[f"blocks.{index}.attn.proj.weight"], torch.zeros_like(expanded[f"blocks.{index}.attn.proj.weight"])
        )

    # Save / load: a plain timm ViT of depth 8 takes the state dict and computes the same function.
    from safetensors.torch import load_file

    from forgetlab.results import save_safetensors

    save_safetensors(tmp_path / "expanded.safetensors", model.backbone.state_dict())
    reloaded = expanded_architecture("offline_vit", depth=8, num_classes=36)
    reloaded.load_state_dict(load_file(str(tmp_path / "expanded.safetensors")), strict=True)
    assert isinstance(reloaded, timm.models.vision_transformer.VisionTransformer)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(images), model.backbone.eval()(images))


def test_block_expansion_refuses_resnets_and_uneven_groups():
    with pytest.raises(ConfigError, match="needs a sequence of blocks"):
        _method("block_expansion").check(random_backbone("offline_resnet"))
    with pytest.raises(ConfigError, match="dividing 6"):
        _method("block_expansion", copies=4).check(random_backbone("offline_vit"))


# ----------------------------------------------------------------------------- LoRA: q,v and the keep policy
def test_lora_qv_run_leaves_the_key_rows_of_every_qkv_untouched(random_backbones, tmp_path):
    from safetensors.torch import load_file

    overrides = tiny_overrides(
        random_backbones["offline_vit"],
        tmp_path,
        **{"method.targets": "q,v", "train.optimizer": "sgd", "train.lr": 0.5},
    )
    folder = run(config_module.load(None, overrides), log=lambda message: None)
    pretrained = load_file(str(random_backbones["offline_vit"]))
    trained = load_file(str(folder.checkpoint))
    dim = pretrained["blocks.0.attn.qkv.weight"].shape[1]
    for block in range(6):
        before, after = (
            pretrained[f"blocks.{block}.attn.qkv.weight"],
            trained[f"backbone.blocks.{block}.attn.qkv.weight"],
        )
        assert torch.equal(before[dim : 2 * dim], after[dim : 2 * dim])  # keys: never adapted
        assert not torch.equal(before[:dim], after[:dim]) and not torch.equal(before[2 * dim :], after[2 * dim :])


def test_merge_and_keep_agree_on_the_first_task_and_keep_never_moves_upstream(random_backbones, tmp_path):
    base = tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"train.lr": 0.05, "train.max_steps": 6})
    merged = run(config_module.load(None, [*base, "name=merge"]), log=lambda message: None)
    kept = run(config_module.load(None, [*base, "name=keep", "method.policy=keep"]), log=lambda message: None)
    merged_matrix, kept_matrix = merged.read_matrix().as_array(), kept.read_matrix().as_array()
    assert merged_matrix[1, 1] == kept_matrix[1, 1]  # the first task, through its adapter either way
    assert not np.isnan(kept_matrix[2, 1:]).any()
    assert (kept_matrix[:, 0] == kept_matrix[0, 0]).all()
    pretrained_predictions = kept.read_predictions(0)["predictions"]
    for row in (1, 2):
        assert np.array_equal(kept.read_predictions(row)["predictions"], pretrained_predictions)
    assert not np.array_equal(merged.read_predictions(2)["predictions"], pretrained_predictions), (
        "merging changed nothing"
    )


def test_a_stored_adapter_reproduces_its_tasks_accuracy(random_backbones, tmp_path):
    """Reload the stored q,v adapter of task 1 into a fresh backbone, with ours and with PEFT."""
    from safetensors.torch import load_file

    from forgetlab.data import build_task
    from forgetlab.evaluate import accuracy, dataset_labels, predict
    from forgetlab.models.adapter_files import load_adapter

    overrides = tiny_overrides(
        random_backbones["offline_vit"],
        tmp_path,
        **{"method.policy": "keep", "method.targets": "q,v", "train.lr": 0.05},
    )
    config = config_module.load(None, overrides)
    folder = run(config, log=lambda message: None)
    task = build_task("fontfamily", config.data)
    model = MultiHeadModel(random_backbone("offline_vit"))
    model.backbone.load_state_dict(load_file(str(random_backbones["offline_vit"])))
    head = model.add_head("fontfamily", task.num_classes)
    checkpoint = load_file(str(folder.checkpoint))
    head.load_state_dict({"weight": checkpoint["heads.fontfamily.weight"], "bias": checkpoint["heads.fontfamily.bias"]})
    for name, layer in load_adapter(folder.path / "adapters" / "fontfamily", model.backbone).items():
        model.backbone.set_submodule(name, layer)
    predictions = predict(model.eval(), "fontfamily", task.test, Runtime(eval_batch_size=64))
    assert accuracy(predictions, dataset_labels(task.test)) == folder.read_matrix().as_array()[2, 1]

    peft = pytest.importorskip("peft")
    plain = random_backbone("offline_vit")
    plain.load_state_dict(load_file(str(random_backbones["offline_vit"])))
    theirs = peft.PeftModel.from_pretrained(plain, str(folder.path / "adapters" / "fontfamily")).eval()
    images = torch.stack([task.test[i][0] for i in range(8)])
    with torch.no_grad():
        ours = model.features(images)
        peft_features = theirs.base_model.model.forward_head(
            theirs.base_model.model.forward_features(images), pre_logits=True
        )
    assert torch.allclose(ours, peft_features, atol=1e-5)


# ----------------------------------------------------------------------------- the published parameter counts
@pytest.fixture(scope="module")
def vit_base():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False)


@pytest.mark.parametrize(
    "method,expected_backbone",
    [
        ({"name": "linear"}, 0),
        ({"name": "lora", "rank": 4, "targets": "q,v"}, 147_456),
        ({"name": "topk", "k": 3}, 21_263_616 + 1_536),  # three blocks + the final LayerNorm
        ({"name": "block_expansion", "copies": 1}, 7_087_872),
        ({"name": "full"}, 85_798_656),
    ],
)
def test_trainable_parameter_counts_on_vit_base(vit_base, method, expected_backbone):
    model = MultiHeadModel(copy.deepcopy(vit_base))
    head = model.add_head("cifar100", 100)
    build_method(config_module.method_config_from_dict(method)).prepare(model, "cifar100")
    head.requires_grad_(True)
    model.upstream_head.requires_grad_(False)
    assert count_parameters(trainable_parameters(model)) == expected_backbone + 76_900


def test_lora_conv3_count_on_resnet50():
    """Paper 1: about 0.08 % of ResNet-50 per unit of rank on the 16 conv3 layers."""
    model = MultiHeadModel(timm.create_model("resnet50", pretrained=False))
    build_method(config_module.method_config_from_dict({"name": "lora", "rank": 1})).prepare(model, "t")
    trainable = count_parameters(trainable_parameters(model))
    # Per stage: blocks x (mid + out) channels, mid = out / 4.
    assert trainable == 3 * (64 + 256) + 4 * (128 + 512) + 6 * (256 + 1024) + 3 * (512 + 2048)
    assert 0.0007 < trainable / count_parameters(list(model.backbone.parameters())) < 0.0009


def test_run_records_trainable_counts_and_fraction(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"method.name": "linear"})
    folder = run(config_module.load(None, overrides), log=lambda message: None)
    records = json.loads(folder.tasks.read_text())
    # 128 features -> 8 font families, then 10 digits; nothing of the backbone.
    assert [r["trainable_parameters"] for r in records] == [128 * 8 + 8, 128 * 10 + 10]
    assert all(r["trainable_backbone_parameters"] == 0 and r["trainable_fraction_of_backbone"] == 0 for r in records)


def test_method_names_are_the_documented_ones():
    assert method_names() == ["block_expansion", "full", "fullrank", "linear", "lora", "topk"]
