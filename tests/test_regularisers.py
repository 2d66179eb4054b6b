"""LwF (a loss term) and replay (a data source): hand-computed values and their invariants."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from forgetlab import config as config_module
from forgetlab.config import TrainConfig
from forgetlab.data import build_task
from forgetlab.errors import ConfigError
from forgetlab.methods.lora import LoRA, LoRAConfig
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.regularisers import DistillationLoss, ReplayBuffer
from forgetlab.regularisers.lwf import distillation
from forgetlab.runtime import Runtime
from forgetlab.train import TaskPlan, train_task
from tests.conftest import random_backbone

CPU = torch.device("cpu")


def _softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_distillation_equals_a_hand_computation():
    teacher, student = [1.0, 2.0, 3.0], [0.5, -1.0, 2.0]
    targets, predicted = _softmax(teacher, 2.0), _softmax(student, 2.0)
    expected = -sum(t * math.log(p) for t, p in zip(targets, predicted))
    value = distillation(torch.tensor([student]), torch.tensor([teacher]), temperature=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # A uniform student against any teacher: log(number of classes).
    assert distillation(torch.zeros(1, 3), torch.tensor([teacher]), 2.0).item() == pytest.approx(math.log(3), rel=1e-6)


class _Heads(torch.nn.Module):
    """A model whose heads return fixed logits, to check how DistillationLoss sums and weights."""

    def __init__(self, logits: dict[str, torch.Tensor]):
        super().__init__()
        self.logits = logits

    def forward(self, images, heads):
        return {h: self.logits[h].expand(len(images), -1) for h in heads}


def test_lwf_term_is_alpha_times_the_sum_over_earlier_heads():
    teacher = _Heads({"upstream": torch.tensor([[1.0, 2.0, 3.0]]), "cars": torch.tensor([[0.0, 4.0]])})
    loss = DistillationLoss(teacher, ["upstream", "cars"], alpha=5.0, temperature=2.0)
    student = {"upstream": torch.tensor([[0.5, -1.0, 2.0]] * 2), "cars": torch.tensor([[1.0, 1.0]] * 2)}
    up_t, up_s = _softmax([1, 2, 3], 2), _softmax([0.5, -1, 2], 2)
    cars_t = _softmax([0, 4], 2)
    expected = 5.0 * (-sum(t * math.log(p) for t, p in zip(up_t, up_s)) + -sum(t * math.log(0.5) for t in cars_t))
    assert loss(torch.zeros(2, 1), student).item() == pytest.approx(expected, rel=1e-6)


def test_lwf_teacher_is_a_frozen_copy():
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone("offline_vit"))
    loss = DistillationLoss(model, [UPSTREAM], alpha=1.0, temperature=2.0)
    images = torch.randn(2, 1, 28, 28)
    before = loss.teacher(images, [UPSTREAM])[UPSTREAM].detach()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert torch.equal(loss.teacher(images, [UPSTREAM])[UPSTREAM], before)
    assert not any(p.requires_grad for p in loss.teacher.parameters())


def _train(model, extra_losses=(), **kwargs):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(48, 1, 28, 28, generator=generator), torch.randint(0, 4, (48,), generator=generator)
    )
    torch.manual_seed(1)  # the head, the adapter and LoRA dropout
    head = model.add_head("task", 4)
    LoRA(LoRAConfig(rank=2)).prepare(model, "task")
    head.requires_grad_(True)
    model.upstream_head.requires_grad_(False)
    heads = [h for loss in extra_losses for h in loss.heads]
    train_task(
        model,
        "task",
        data,
        TrainConfig(batch_size=16, max_steps=4, lr=1e-2),
        Runtime(),
        seed=0,
        plan=TaskPlan(extra_losses=extra_losses, extra_heads=heads, **kwargs),
    )
    return model.state_dict()


def test_lwf_with_alpha_zero_gives_the_same_weights_as_no_lwf():
    torch.manual_seed(0)
    pretrained = MultiHeadModel(random_backbone("offline_vit"))
    plain = _train(copy.deepcopy(pretrained))
    model = copy.deepcopy(pretrained)
    zero = _train(model, [DistillationLoss(model, [UPSTREAM], alpha=0.0, temperature=2.0)])
    assert plain.keys() == zero.keys() and all(torch.equal(plain[k], zero[k]) for k in plain)
    model = copy.deepcopy(pretrained)
    five = _train(model, [DistillationLoss(model, [UPSTREAM], alpha=5.0, temperature=2.0)])
    assert any(not torch.equal(plain[k], five[k]) for k in plain), "alpha 5 changed nothing"


# ----------------------------------------------------------------------------- replay
@pytest.fixture(scope="module")
def upstream():
    return build_task("offline_upstream", config_module.DataConfig())


@pytest.mark.parametrize("size", [1, 50, 100])
def test_replay_buffer_is_bounded_balanced_and_drawn_from_the_train_split(upstream, size):
    buffer = ReplayBuffer(upstream.train, size, seed=0)
    assert len(buffer) == size and len(set(buffer.indices.tolist())) == size
    assert buffer.indices.max() < len(upstream.train)
    counts = np.bincount(buffer.labels, minlength=upstream.num_classes)
    assert counts.max() - counts.min() <= 1  # round-robin over the classes
    assert buffer.dataset is upstream.train
    seen = 0
    for images, labels in buffer.batches(16, seed=3):
        assert len(images) == min(16, size)
        for image, label in zip(images, labels):
            matches = [i for i in buffer.indices if int(upstream.train.labels[i]) == int(label)]
            assert any(torch.equal(upstream.train[int(i)][0], image) for i in matches)
        seen += 1
        if seen == 3:
            break
    assert np.array_equal(ReplayBuffer(upstream.train, size, seed=0).indices, buffer.indices)


def test_replay_mixes_upstream_examples_into_every_batch(upstream):
    """The replayed examples reach the loss through the upstream head: training changes with replay."""
    torch.manual_seed(0)
    pretrained = MultiHeadModel(random_backbone("offline_vit"))
    plain = _train(copy.deepcopy(pretrained))
    buffer = ReplayBuffer(upstream.train, 40, seed=0)
    replayed = _train(copy.deepcopy(pretrained), replay=buffer.batches(8, seed=0), replay_head=UPSTREAM)
    assert any(not torch.equal(plain[k], replayed[k]) for k in plain)
    with pytest.raises(ConfigError, match="replay.size"):
        ReplayBuffer(upstream.train, 0, seed=0)
