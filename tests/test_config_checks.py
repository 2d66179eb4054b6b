"""One check per config: every section and every method's config checks itself when it is built
(choices typed as ``Literal``), the method's limits on the backbone are checked on the architecture
built without weights, and loading a config runs each check once."""

from __future__ import annotations

import typing

import pytest
import torch

from forgetlab import config as config_module
from forgetlab.cli import main
from forgetlab.config import BackboneConfig, DataConfig, EvalConfig, PreprocessConfig, RunConfig, TrainConfig
from forgetlab.errors import ConfigError
from forgetlab.methods import method_class, method_names
from forgetlab.methods.base import Checked
from forgetlab.methods.lora import INITS, POLICIES, SCALINGS, LoRAConfig
from forgetlab.models import lora_layers
from forgetlab.models.expansion import all_blocks
from forgetlab.models.offline import OFFLINE_ARGS
from forgetlab.models.skeleton import backbone_skeleton


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TrainConfig(optimizer="adam"), "^train.optimizer must be one of: adamw, sgd; got 'adam'$"),
        (lambda: TrainConfig(epochs=0), "^train.epochs must be at least 1$"),
        (
            lambda: EvalConfig(upstream_evaluator="head,head"),
            r"^eval.upstream_evaluator names one of its choices twice \(head,head\)",
        ),
        (
            lambda: PreprocessConfig(eval_interpolation="cubic"),
            "^preprocess.eval_interpolation must be one of: bilinear, bicubic, nearest; got 'cubic'$",
        ),
        (lambda: DataConfig(workers=-1), r"^data.workers must be in 0\.\.256$"),
        (lambda: BackboneConfig(image_size=4), r"^backbone.image_size must be in 8\.\.4096$"),
        (lambda: RunConfig(seed=-1), r"^seed must be in 0\.\.4294967295$"),
        (lambda: LoRAConfig(rank=0), "^method.rank must be at least 1, got 0$"),
        (lambda: LoRAConfig(policy="kep"), "^method.policy must be one of: merge, keep; got 'kep'$"),
    ],
)
def test_a_section_built_from_python_checks_itself(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_every_section_and_method_config_is_checked_and_its_choices_are_literal_types():
    sections = [
        RunConfig,
        BackboneConfig,
        PreprocessConfig,
        DataConfig,
        TrainConfig,
        EvalConfig,
        *(method_class(name).Config for name in method_names()),
    ]
    assert all(issubclass(cls, Checked) for cls in sections)
    choices = config_module.documented_choices()
    assert choices["train.optimizer"] == ("adamw", "sgd") and choices["device"] == ("auto", "cpu", "cuda")
    assert (
        choices["preprocess.train_interpolation"] == config_module.INTERPOLATIONS == ("bilinear", "bicubic", "nearest")
    )
    assert choices["eval.upstream_evaluator"] == ("head", "knn", "probe")  # a comma list of its choices
    assert len(choices) == 15
    hints = typing.get_type_hints(LoRAConfig)
    assert (typing.get_args(hints["policy"]), typing.get_args(hints["scaling"]), typing.get_args(hints["init"])) == (
        POLICIES,
        SCALINGS,
        INITS,
    )
    assert (SCALINGS, INITS) == (lora_layers.SCALINGS, lora_layers.INITS)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.rank=0"], "^method.rank must be at least 1, got 0$"),
        (["method.alpha=0"], "^method.alpha must be positive, got 0.0; leave it unset for 2 x method.rank$"),
        (["method.alpha=-2"], "method.alpha must be positive, got -2.0"),
        (["method.dropout=1.5"], r"^method.dropout must be in \[0, 1\), got 1.5$"),
        (["method.policy=kep"], "^method.policy must be one of: merge, keep; got 'kep'$"),
        (
            ["method.name=topk", "method.k=9"],
            r"^method.k=9 but VisionTransformer \(vit family\) has 6 blocks .*pick k in 1\.\.6$",
        ),
        (["method.name=topk", "method.k=5", "backbone.name=offline_resnet"], r"method.k=5 but ResNet .* has 4 stages"),
        (["method.name=topk", "method.k=0"], "^method.k must be at least 1, got 0$"),
        (["method.name=block_expansion", "method.copies=4"], "pick method.copies dividing 6"),
        (
            ["method.name=block_expansion", "method.positions=[1, 6]"],
            r"method.positions must be distinct block indices in 0\.\.5",
        ),
        (["method.name=block_expansion", "backbone.name=offline_resnet"], "block_expansion needs a sequence of blocks"),
        (["method.name=fullrank", "method.targets=q,v"], "not available at full rank"),
        (
            ["eval.upstream_evaluator=[head, nonsense]"],
            r"^eval.upstream_evaluator must be one of: head, knn, probe; got 'nonsense' \(in 'head,nonsense'\)$",
        ),
        (["eval.upstream_evaluator=[]"], r"^eval.upstream_evaluator lists nothing; .* e.g. \[head\]$"),
        (["eval.probe_images=1"], "^eval.probe_images must be 0 \\(drift off\\) or at least 2 .*got 1$"),
    ],
)
def test_loading_a_config_checks_the_methods_options_and_its_limits_on_the_backbone(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_module.load(None, overrides)


def test_forgetlab_config_refuses_a_bad_method_option_in_one_line(capsys):
    assert main(["config", "method.rank=0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [
        "forgetlab: error: method.rank must be at least 1, got 0"
    ]
    assert main(["config", "method.name=topk", "method.k=6"]) == 0  # the limit itself is allowed: 6 blocks
    assert "k: 6" in capsys.readouterr().out


def test_the_skeleton_is_the_architecture_without_weights_built_once():
    skeleton = backbone_skeleton(BackboneConfig())
    assert skeleton is backbone_skeleton(BackboneConfig())  # one per architecture and arguments
    assert all(parameter.device == torch.device("meta") for parameter in skeleton.parameters())
    assert len(all_blocks(skeleton)) == OFFLINE_ARGS["offline_vit"]["depth"] == 6
    assert len(all_blocks(backbone_skeleton(BackboneConfig(kwargs={"depth": 2})))) == 2
    with pytest.raises(ConfigError, match="unknown backbone 'vit_bse'"):
        backbone_skeleton(BackboneConfig(name="vit_bse"))


def test_loading_a_config_runs_each_check_once(monkeypatch):
    from forgetlab.models import skeleton as skeleton_module

    calls = {"lora": 0, "train": 0}
    for cls, key in ((LoRAConfig, "lora"), (TrainConfig, "train")):
        rules = cls.rules

        def counted(self, rules=rules, key=key):
            calls[key] += (
                (self.rank == 2) if key == "lora" else (self.epochs == 3)
            )  # the config's own, not the defaults run_name compares with
            return rules(self)

        monkeypatch.setattr(cls, "rules", counted)
    built = []
    monkeypatch.setattr(skeleton_module, "create", lambda *args, **kwargs: built.append(args) or torch.nn.Module())
    monkeypatch.setattr(skeleton_module, "_SKELETONS", {})
    config = config_module.load(None, ["method.rank=2", "train.epochs=3"])
    assert (config.method.rank, config.train.epochs) == (2, 3)
    assert calls == {"lora": 1, "train": 1} and built == []  # LoRA's limits do not depend on the backbone: no skeleton
    checked = []
    monkeypatch.setattr(
        method_class("topk"), "check_backbone", classmethod(lambda cls, config, skeleton: checked.append(config.k))
    )
    config_module.load(None, ["method.name=topk", "backbone.name=offline_resnet"])
    config_module.load(None, ["method.name=topk", "method.k=2", "backbone.name=offline_resnet", "seed=1"])
    assert built == [("offline_resnet",)] and checked == [3, 2]  # one skeleton for both configs, each checked once


def test_only_methods_with_backbone_limits_build_the_skeleton():
    assert {name for name in method_names() if method_class(name).reads_backbone()} == {"topk", "block_expansion"}


def test_a_repeated_key_names_its_file_and_line(tmp_path):
    (tmp_path / "dup.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'dup.yaml'}: key 'lr' appears twice \\(line 3\\); keep one$"):
        config_module.load(tmp_path / "dup.yaml")
