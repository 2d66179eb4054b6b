"""The runtime is resolved once from the config, and what training and evaluation do follows it: its
device, autocast dtype, evaluation batch size and progress mode, not the environment read again."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.evaluate import predict
from forgetlab.models.backbones import create
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runner import run
from forgetlab.runtime import Runtime
from forgetlab.train import TaskPlan, train_task


def _config(*overrides):
    return config_module.resolve({}, ["device=cpu", *overrides])


@pytest.mark.parametrize(
    "precision,amp_dtype", [("auto", None), ("fp32", None), ("tf32", None), ("bf16", torch.bfloat16)]
)
def test_the_runtime_resolves_the_precision_into_autocast_s_dtype(precision, amp_dtype):
    assert Runtime.from_config(_config(f"precision={precision}")).amp_dtype == amp_dtype


def test_the_runtime_takes_every_setting_from_its_config(monkeypatch):
    monkeypatch.setenv("FORGETLAB_PROGRESS", " Lines:5 ")
    runtime = Runtime.from_config(
        _config("eval.batch_size=7", "data.workers=3", "data.pipeline=device", "precision=fp32")
    )
    assert (runtime.device, runtime.precision, runtime.eval_batch_size, runtime.workers) == (
        torch.device("cpu"),
        "fp32",
        7,
        3,
    )
    assert (runtime.pipeline, runtime.progress_mode) == ("device", "lines:5")
    assert (
        Runtime.from_config(_config("data.pipeline=auto")).pipeline == "pil"
    )  # auto on a CPU: PIL measured faster there
    assert Runtime.from_config(_config("device=cuda"), device="cpu").device == torch.device(
        "cpu"
    )  # a command's --device wins


def test_a_run_refuses_an_unreadable_progress_mode_before_it_writes(monkeypatch, tmp_path):
    monkeypatch.setenv("FORGETLAB_PROGRESS", "sometimes")
    config = _config(f"out_dir={tmp_path}", "name=refused")
    with pytest.raises(ConfigError, match="FORGETLAB_PROGRESS='sometimes': give 0, 1, lines or lines:SECONDS"):
        run(config, log=lambda message: None)
    assert list(tmp_path.iterdir()) == []


def _tiny_model() -> MultiHeadModel:
    torch.manual_seed(0)
    model = MultiHeadModel(create("offline_vit", num_classes=36))
    model.add_head("task", 3)
    return model


def test_evaluation_batches_and_progress_follow_the_runtime(monkeypatch, capsys):
    monkeypatch.setenv("FORGETLAB_PROGRESS", "0")  # read when a runtime is made, not by each loop
    images = TensorDataset(torch.randn(12, 1, 28, 28), torch.arange(12) % 3)
    model = _tiny_model()
    by_five = predict(
        model, "task", images, Runtime(eval_batch_size=5, progress_mode="lines:0"), description="eval task"
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("forgetlab: eval task:")]
    assert [line.split(": ")[2].split(" (")[0] for line in lines] == ["1/3 batches", "2/3 batches", "3/3 batches"]
    by_twelve = predict(model, "task", images, Runtime(eval_batch_size=12))
    assert by_five.shape == (12,) and by_five.tolist() == by_twelve.tolist()  # the batch size changes no prediction
    assert "forgetlab:" not in capsys.readouterr().err  # mode 0 from the environment, read by Runtime()


def test_training_runs_the_plan_on_the_runtime(capsys):
    model = _tiny_model()
    model.backbone.requires_grad_(False)
    before = model.heads["task"].weight.detach().clone()
    logged = []
    plan = TaskPlan(description="task 1/1 toy", log_step=lambda step, values: logged.append((step, sorted(values))))
    train_config = config_module.resolve(
        {}, ["train.batch_size=4", "train.epochs=2", "train.max_steps=3", "train.log_every=1"]
    ).train
    dataset = TensorDataset(torch.randn(8, 1, 28, 28), torch.arange(8) % 3)
    stats = train_task(model, "task", dataset, train_config, Runtime(progress_mode="lines:0"), seed=0, plan=plan)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("forgetlab: task 1/1 toy:")]
    assert (stats.steps, stats.examples, len(lines)) == (3, 12, 3)
    assert logged == [(1, ["loss", "lr"]), (2, ["loss", "lr"]), (3, ["loss", "lr"])]
    assert not torch.equal(model.heads["task"].weight, before) and not model.training
