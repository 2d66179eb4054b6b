"""The incremental run: what changes during a task, the accuracy matrix, determinism and resuming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetlab import config as config_module
from forgetlab.config import TrainConfig
from forgetlab.data import build_task
from forgetlab.evaluate import head_evaluator
from forgetlab.methods.lora import LoRA, LoRAConfig
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.results import RunFolder, read_json
from forgetlab.runner import run
from forgetlab.runtime import Runtime
from forgetlab.train import train_task
from tests.conftest import random_backbone, tiny_overrides


@pytest.mark.parametrize("name", ["offline_vit", "offline_resnet"])
def test_only_adapter_and_task_head_change_during_a_task(name):
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone(name))
    model.add_head("earlier", 5)
    task = build_task("digits", config_module.DataConfig(max_train=64))
    head = model.add_head("digits", task.num_classes)
    method = LoRA(LoRAConfig(rank=2))
    method.prepare(model, "digits")
    model.heads.requires_grad_(False)
    head.requires_grad_(True)
    model.upstream_head.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    train_task(model, "digits", task.train, TrainConfig(batch_size=16, max_steps=3, lr=1e-2), Runtime(), seed=0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "training changed nothing"
    assert all(".lora_" in n or n.startswith("heads.digits.") for n in changed), sorted(changed)
    assert any(n.startswith("heads.digits.") for n in changed)
    assert any(".lora_B." in n for n in changed)
    # BatchNorm statistics are frozen (paper 1); the upstream head never moves.
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    upstream_ids = {id(p) for p in model.upstream_head.parameters()}
    upstream_names = [n for n, p in model.named_parameters() if id(p) in upstream_ids]
    assert upstream_names and not set(upstream_names) & changed


def test_accuracy_matrix_shape_and_pretrained_cell(random_backbones, tmp_path):
    config = config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path))
    folder = run(config, log=lambda message: None)
    matrix = folder.read_matrix()
    assert matrix.columns == ["upstream", "fontfamily", "digits"]
    values = matrix.as_array()
    assert values.shape == (3, 3)
    # Row i has the upstream cell and tasks 1..i; the rest is empty.
    assert np.isnan(values[0, 1:]).all() and np.isnan(values[1, 2])
    assert not np.isnan(values[np.tril_indices(3)]).any()
    # Row 0, column 0: the pretrained backbone's upstream accuracy, measured separately.
    backbone = load_backbone(config.backbone)
    upstream = build_task(config.data.upstream, config.data)
    separately = head_evaluator(MultiHeadModel(backbone.model), upstream.test, Runtime(eval_batch_size=7))
    assert separately.evaluator == "head" and separately.at_k == {} and separately.record() == {}
    assert values[0, 0] == pytest.approx(separately.accuracy, abs=1e-12)
    np.testing.assert_array_equal(folder.read_predictions(0)["predictions"], separately.predictions)
    records = __import__("json").loads(folder.tasks.read_text())
    assert [r["task"] for r in records] == ["fontfamily", "digits"]
    # offline_vit: 6 blocks x rank 4 x (128 in + 384 out) on the fused qkv.
    assert all(r["trainable_backbone_parameters"] == 6 * 4 * (128 + 384) for r in records)


def test_same_seed_same_matrix(random_backbones, tmp_path):
    matrices = []
    for name in ("a", "b"):
        config = config_module.load(None, tiny_overrides(random_backbones["offline_resnet"], tmp_path, name=name))
        matrices.append(run(config, log=lambda message: None).read_matrix().values)
    assert matrices[0] == matrices[1]
    other = config_module.load(None, tiny_overrides(random_backbones["offline_resnet"], tmp_path, name="c", seed=1))
    assert run(other, log=lambda m: None).read_matrix().values != matrices[0], "the seed has no effect"


class _Killed(Exception):
    pass


def test_resume_after_interruption_gives_the_uninterrupted_result(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name="whole")
    whole = run(config_module.load(None, overrides), log=lambda m: None)

    interrupted = config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="cut"))

    def die_after_first_task(message: str) -> None:
        if message.startswith("task 1/2"):
            raise _Killed

    with pytest.raises(_Killed):
        run(interrupted, log=die_after_first_task)
    folder = RunFolder(interrupted.run_dir)
    assert folder.completed_tasks() == 1
    assert len(folder.read_matrix().values) == 2
    messages = []
    resumed = run(interrupted, log=messages.append)
    assert any(m.startswith("resuming") for m in messages)
    assert not any(m.startswith("task 1/2") for m in messages), "task 1 ran again"
    assert resumed.read_matrix().values == whole.read_matrix().values
    assert [r["row"] for r in read_json(resumed.upstream_eval)] == [0, 1, 2]
    for task in range(3):
        np.testing.assert_array_equal(
            resumed.read_predictions(task)["predictions"], whole.read_predictions(task)["predictions"]
        )
    # A finished run is not run again.
    messages.clear()
    run(interrupted, log=messages.append)
    assert any("nothing to do" in m for m in messages)


def test_a_folder_from_before_an_option_existed_resumes(random_backbones, tmp_path):
    """Options added later take their defaults; the stored config file is not rewritten."""
    import yaml

    config = config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="old"))
    run(config, log=lambda m: None)
    stored = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del stored["replay"], stored["eval"]["knn_k"]  # as written by an older forgetlab
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(stored))
    messages = []
    run(config, log=messages.append)
    assert any("nothing to do" in m for m in messages)
    assert "replay" not in yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    changed = config_module.load(
        None, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="old") + ["replay.size=5"]
    )
    with pytest.raises(config_module.ConfigError, match="differs in: replay.size"):
        run(changed, log=lambda m: None)


def test_a_moved_or_renamed_run_folder_resumes(random_backbones, tmp_path):
    """Where a folder lies is not part of what it computed: moved elsewhere (another out_dir, another
    name) a half-finished run resumes there and ends with the uninterrupted matrix."""
    whole = run(
        config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path / "a", name="whole")),
        log=lambda m: None,
    )
    cut = config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path / "a", name="cut"))

    def die_after_first_task(message: str) -> None:
        if message.startswith("task 1/2"):
            raise _Killed

    with pytest.raises(_Killed):
        run(cut, log=die_after_first_task)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "cut").rename(tmp_path / "b" / "moved")
    messages = []
    moved = run(
        config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path / "b", name="moved")),
        log=messages.append,
    )
    assert any(m.startswith("resuming") for m in messages) and not any(m.startswith("task 1/2") for m in messages)
    assert moved.read_matrix().values == whole.read_matrix().values
