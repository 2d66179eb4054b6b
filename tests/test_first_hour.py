"""A new user's first hour: one-line answers that name the fix, before anything slow happens."""

from __future__ import annotations

import time

import pytest
import torch

from forgetlab.cli import main
from forgetlab.config import BackboneConfig
from forgetlab.errors import ConfigError, DataError


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache; huggingface_hub reads its variables at import, so its constants too."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    return tmp_path / "hub"


def test_a_typo_in_a_timm_name_names_the_closest_names_everywhere(capsys):
    from forgetlab.models.backbones import load_backbone

    for name in ("vit_bse_patch16_224", "vit_bse_patch16_224.augreg_in1k"):
        with pytest.raises(
            ConfigError, match=rf"unknown backbone '{name}'; closest timm names: vit_base_patch16_224, "
        ):
            load_backbone(BackboneConfig(name=name))
    with pytest.raises(
        ConfigError,
        match="no pretrained tag 'augreg_in2k' for vit_base_patch16_224; closest .*vit_base_patch16_224.augreg_in1k",
    ):
        load_backbone(BackboneConfig(name="vit_base_patch16_224.augreg_in2k"))
    for command in (["anatomy"], ["run", "backbone.weights=w.safetensors"], ["run"]):
        assert main([*command, "backbone.name=vit_bse_patch16_224"]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(
            "forgetlab: error: unknown backbone 'vit_bse_patch16_224'; closest timm names: vit_base_patch16_224"
        )


def test_offline_a_hub_backbone_fails_at_once_naming_hf_hub_offline(empty_hub, monkeypatch):
    from forgetlab.models.backbones import load_backbone

    start = time.perf_counter()
    with pytest.raises(
        DataError,
        match=r"vit_base_patch16_224 \(timm's default tag: vit_base_patch16_224.augreg2_in21k_ft_in1k\) .*"
        r"the hub is unreachable \(set HF_HUB_OFFLINE=1 .*huggingface.co/timm/vit_base_patch16_224.augreg2",
    ):
        load_backbone(BackboneConfig(name="vit_base_patch16_224"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids the download"):
        load_backbone(BackboneConfig(name="resnet18.a1_in1k"))
    assert time.perf_counter() - start < 10  # huggingface_hub's own retries take about 50 s


def test_an_untagged_name_takes_timms_default_tag_from_the_cache_without_network(empty_hub):
    """Cached weights load with no network at all (the endpoint answers nothing) and equal the file."""
    import timm
    from safetensors.torch import save_file

    from forgetlab.models.backbones import load_backbone

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("test_vit", num_classes=1000).state_dict().items()}
    snapshot = empty_hub / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (empty_hub / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (empty_hub / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("0123abcd")
    backbone = load_backbone(BackboneConfig(name="test_vit"))
    assert backbone.recipe == {"source": "timm pretrained", "tag": "r160_in1k"}
    loaded = backbone.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.fixture
def no_pretraining(monkeypatch):
    """Pretraining an offline backbone takes minutes: a test that reaches it has failed."""
    import forgetlab.pretrain

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was pretrained before the run's inputs were checked")

    monkeypatch.setattr(forgetlab.pretrain, "pretrain", refuse)


def test_a_missing_tracker_or_dataset_is_refused_before_any_pretraining(
    no_pretraining, forgetlab_home, monkeypatch, tmp_path, capsys
):
    import importlib.util

    from forgetlab.data import build_task

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "wandb" else find_spec(name, *args)
    )
    build_task("offline_upstream")  # the session's offline world, shared with a home where no backbone is built
    (tmp_path / "home").mkdir()
    for world in forgetlab_home.glob("offline-v*"):
        (tmp_path / "home" / world.name).symlink_to(world)
    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path / "home"))
    assert main(["run", "track.wandb=true", f"out_dir={tmp_path}"]) == 2
    assert "track.wandb needs the wandb package" in capsys.readouterr().err
    assert main(["run", "data.tasks=[cub200]", f"data.root={tmp_path}", f"out_dir={tmp_path}"]) == 2
    assert "CUB_200_2011" in capsys.readouterr().err
    # a hub backbone: the dataset is checked before any download is tried
    assert (
        main(["run", "backbone.name=vit_base_patch16_224.augreg_in1k", "data.tasks=[cub200]", f"data.root={tmp_path}"])
        == 2
    )
    assert "CUB_200_2011" in capsys.readouterr().err
    assert not (tmp_path / "home" / "backbones").exists()


def test_pretraining_says_where_it_builds(monkeypatch, tmp_path, capsys):
    import forgetlab.pretrain

    class Stop(Exception):
        pass

    monkeypatch.setattr(forgetlab.pretrain, "build_task", lambda *args, **kwargs: (_ for _ in ()).throw(Stop()))
    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path))
    with pytest.raises(Stop):
        forgetlab.pretrain.pretrain("offline_vit")
    line = capsys.readouterr().out.strip()
    from forgetlab.models.backbones import offline_backbone_dir

    assert line == (
        f"forgetlab: pretraining offline_vit on offline_upstream for 5 "
        f"epochs into {offline_backbone_dir('offline_vit')} (FORGETLAB_HOME "
        f"is {tmp_path}: 'export FORGETLAB_HOME=...' to keep it elsewhere)"
    )


def test_progress_outside_a_terminal_is_a_plain_line_every_interval(monkeypatch, capsys):
    from forgetlab.runtime import PlainProgress, precision_warning, progress

    now = [0.0]
    bar = PlainProgress(total=400, desc="task 1/3 fontfamily", unit="step", every=60, clock=lambda: now[0])
    for _ in range(300):
        now[0] += 0.25  # 4 steps a second: a line at 60 s, none before or since
        bar.update(1)
        bar.set_postfix(loss="1.234", refresh=False)
    assert capsys.readouterr().err.splitlines() == [
        "forgetlab: task 1/3 fontfamily: 240/400 steps (60%), 4.0 steps/s, about 40 s left, loss=1.234"
    ]
    monkeypatch.setenv("FORGETLAB_PROGRESS", "lines:0")
    assert [batch for batch in progress(range(2), desc="eval fontfamily", unit="batch")] == [0, 1]
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "forgetlab: eval fontfamily: 1/2 batches (50%)",
        "forgetlab: eval fontfamily: 2/2 batches (100%)",
    ]
    monkeypatch.setenv("FORGETLAB_PROGRESS", "sometimes")
    with pytest.raises(ConfigError, match="FORGETLAB_PROGRESS='sometimes': give 0, 1, lines or lines:SECONDS"):
        progress(range(2))
    assert precision_warning(torch.device("cpu"), "bf16").startswith("precision=bf16 on a CPU: ")
    assert (
        precision_warning(torch.device("cpu"), "auto") is None
        and precision_warning(torch.device("cuda"), "bf16") is None
    )


def test_targets_in_peft_list_form_every_methods_keys_and_the_version(capsys):
    from forgetlab import config as config_module
    from forgetlab.methods import method_names

    for given in (["method.targets=[q, v]"], ["method.targets=q,v"]):
        assert config_module.resolve({}, given).method.targets == "q,v"
    assert main(["config", "--keys", "method.name=linear"]) == 0
    out = capsys.readouterr().out
    assert f"method.name = 'linear'\n    the fine-tuning method: {', '.join(method_names())};" in out
    assert "method.rank (method.name=lora) = 4" in out and "method.k (method.name=topk) = 3" in out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip().startswith("forgetlab 0.")
