"""``save.updates=true`` and ``forgetlab explain`` for the methods other than LoRA: the stored deltas
rebuild the run's weights bit for bit; the rows ``all`` reproduce the run's predictions image for image
(full, top-k, linear, block expansion); a unit whose update is zero changes nothing; block expansion's
units are its inserted blocks and their spectra are taken against the weights they were inserted with;
a kill between the updates file and the commit resumes to the same files; a run without stored updates
is refused in one line naming ``save.updates=true``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from forgetlab import config as config_module
from forgetlab import run_updates
from forgetlab.cli import main
from forgetlab.data.base import dataset_labels
from forgetlab.explanation import explain
from forgetlab.explanation.attribution import Scorer, attribution_rows
from forgetlab.explanation.updates import rebuild
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.results import RunFolder, write_json
from forgetlab.runner import run, upstream_task
from forgetlab.runtime import Runtime
from tests.conftest import tiny_overrides

QUIET = {"device": "cpu", "log": lambda message: None}
SMALL = {"train.lr": 0.05, "data.max_train": 32, "data.max_test": 16, "train.max_steps": 2, "save.updates": "true"}


def _config(backbone_file, folder, name, **extra):
    return config_module.resolve({}, tiny_overrides(backbone_file, folder, name=name, **{**SMALL, **extra}))


def _run(backbone_file, folder, name, **extra):
    return run(_config(backbone_file, folder, name, **extra), log=lambda message: None)


@pytest.fixture(scope="module")
def runs(random_backbones, tmp_path_factory):
    """Finished 2-phase runs of the offline ViT, each with save.updates=true."""
    folder, vit = tmp_path_factory.mktemp("updates"), random_backbones["offline_vit"]
    return {
        "full": _run(vit, folder, "full", **{"method.name": "full"}),
        "topk": _run(vit, folder, "topk", **{"method.name": "topk", "method.k": 1}),
        "linear": _run(vit, folder, "linear", **{"method.name": "linear"}),
        "block_expansion": _run(vit, folder, "block", **{"method.name": "block_expansion"}),
    }


def _stored_predictions(folder: RunFolder, phase: int) -> np.ndarray:
    data = folder.read_predictions(phase)
    return data["predictions"] == data["labels"]


def _check_all_rows(folder: RunFolder, attribution) -> None:
    """Rows ``all``: reverting every unit is the pretrained row, applying every unit the phase's row, and
    both models predict what the run stored on every image."""
    matrix = folder.read_matrix().values
    totals = attribution[attribution.unit == "all"].set_index("phase")
    assert list(totals.index) == [1, 2]
    for phase, row in totals.iterrows():
        assert row.reverted_accuracy_pct == pytest.approx(100 * matrix[0][0], abs=1e-9)
        assert row.applied_accuracy_pct == pytest.approx(100 * matrix[phase][0], abs=1e-9)
        assert row.applied_accuracy_pct == pytest.approx(100 * np.mean(_stored_predictions(folder, phase)), abs=1e-9)
        assert row.agreement_pct == 100.0  # image for image


def test_the_stored_updates_rebuild_the_runs_weights_bit_for_bit(runs):
    folder = runs["full"]
    files = sorted((folder.path / "updates").iterdir())
    assert [path.name for path in files] == ["digits.safetensors", "fontfamily.safetensors"]
    committed = json.loads(folder.progress.read_text())["files"]
    for path in files:  # hashed into the commit like every result file
        assert committed[f"updates/{path.name}"] == hashlib.sha256(path.read_bytes()).hexdigest()
    stored = {path.name: run_updates.read(path) for path in files}
    trainable = {name for name, _ in load_backbone(folder_config(folder).backbone).model.named_parameters()}
    trainable.discard("head.weight"), trainable.discard("head.bias")  # the upstream head never trains
    assert set(stored["fontfamily.safetensors"]) == trainable
    # this learning rate moves many weights by more than half their size: fp32 deltas alone cannot rebuild them
    assert any(exact is not None for _, exact in stored["digits.safetensors"].values())
    config = folder_config(folder)
    backbone = load_backbone(config.backbone).model
    for _ in rebuild(config, backbone, folder.path, ["fontfamily", "digits"]):
        pass
    checkpoint = load_file(str(folder.checkpoint))
    for name, parameter in backbone.named_parameters():
        assert torch.equal(parameter.detach(), checkpoint[f"backbone.{name}"]), name


def folder_config(folder: RunFolder):
    return config_module.load_stored(folder.config)


@pytest.mark.parametrize("method", ["full", "topk"])
def test_the_all_rows_reproduce_the_matrix(runs, method):
    folder = runs[method]
    tables = explain(folder.path, parts="attribution" if method == "full" else "attribution,spectra", **QUIET)
    attribution = tables["attribution"]
    _check_all_rows(folder, attribution)
    units = set(attribution[attribution.unit != "all"].unit)
    if method == "full":  # every block, and the tensors outside them grouped by module
        assert units == {*(f"blocks.{i}" for i in range(6)), "cls_token", "pos_embed", "patch_embed.proj", "norm"}
    else:  # top-1: the last block and the final norm; the frozen blocks stored nothing (their update is zero)
        assert units == {"blocks.5", "norm"}
        spectra_table = tables["spectra"]
        assert set(spectra_table.layer) == {f"blocks.5.{m}" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
        assert spectra_table.adapter_rank.isna().all() and (spectra_table.numerical_rank >= 1).all()
        # the cumulative update of phase 2 is the sum of both phases' own updates
        norms = spectra_table.set_index(["phase", "layer", "scope"]).relative_norm
        assert norms[(2, "blocks.5.attn.qkv", "cumulative")] <= (
            norms[(1, "blocks.5.attn.qkv", "phase")] + norms[(2, "blocks.5.attn.qkv", "phase")] + 1e-12
        )
        assert len(tables["overlap"]) == 4 and (tables["overlap"]["rank"] <= 8).all()


def test_reverting_a_unit_whose_update_is_zero_changes_nothing(runs):
    """Top-1 leaves blocks.0 as pretrained: reverting it leaves the phase model's predictions, applying it
    alone leaves the pretrained model's, image for image."""
    folder = runs["topk"]
    config = folder_config(folder)
    backbone = load_backbone(config.backbone)
    _, upstream = upstream_task(config, backbone)
    labels = dataset_labels(upstream.test)
    runtime = Runtime.from_config(config, device="cpu")
    scorer = Scorer(MultiHeadModel(load_backbone(config.backbone).model), upstream.test, runtime, by_parameter=True)
    for update in rebuild(config, backbone.model, folder.path, ["fontfamily", "digits"]):
        untouched = {
            name: parameter.detach().clone()
            for name, parameter in backbone.model.named_parameters()
            if name.startswith("blocks.0.")
        }
        rows = attribution_rows(
            scorer,
            labels,
            {**update.pretrained, **untouched},
            {**update.weights, **untouched},
            phase=update.index,
            unit="block",
            stored={"pretrained": None, "after": None},
        )
        zero = next(row for row in rows if row["unit"] == "blocks.0")
        assert zero["reverted_accuracy_pct"] == rows[0]["phase_accuracy_pct"]
        assert zero["reverted_accuracy_pct"] == pytest.approx(100 * np.mean(_stored_predictions(folder, update.index)))
        assert zero["applied_accuracy_pct"] == rows[0]["pretrained_accuracy_pct"]
        assert zero["recovered_pp"] == 0 and zero["damage_pp"] == 0 and zero["recovered_p"] == 1.0


def test_linear_trains_no_backbone_tensor_so_there_is_nothing_to_attribute(runs, tmp_path):
    folder = runs["linear"]
    assert all(not run_updates.read(path) for path in (folder.path / "updates").iterdir())  # empty files
    lines = []
    tables = explain(folder.path, device="cpu", log=lines.append)
    attribution = tables["attribution"]
    assert list(attribution.unit) == ["all", "all"]
    _check_all_rows(folder, attribution)
    assert (attribution.reverted_accuracy_pct == attribution.applied_accuracy_pct).all()
    assert tables["spectra"].empty
    assert sum("nothing to attribute" in line for line in lines) == 2
    from forgetlab.reporting.page import write_report

    write_report([folder.path], tmp_path / "report", permutations=20, log=lambda message: None)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "the run trained no backbone tensor, so there is nothing to attribute" in page
    assert not any(p.name.startswith("explain_") for p in (tmp_path / "report" / "figures").iterdir())


def test_block_expansion_attributes_to_its_inserted_blocks(runs, random_backbones):
    """The offline ViT's 6 blocks: phase 1 inserts a copy of block 5 (blocks.6), phase 2 a copy of that
    trained copy (blocks.7). Reverting an inserted block removes it; the spectra of its matrices are taken
    against the weights it was inserted with."""
    folder = runs["block_expansion"]
    tables = explain(folder.path, **QUIET)
    attribution = tables["attribution"]
    _check_all_rows(folder, attribution)
    assert list(attribution.unit) == ["all", "blocks.6", "all", "blocks.6", "blocks.7"]
    first = attribution.set_index(["phase", "unit"])
    # phase 1 inserted one block: removing it is the pretrained model, applying it alone the phase model
    assert first.loc[(1, "blocks.6"), "reverted_accuracy_pct"] == first.loc[(1, "all"), "pretrained_accuracy_pct"]
    assert first.loc[(1, "blocks.6"), "applied_accuracy_pct"] == first.loc[(1, "all"), "phase_accuracy_pct"]
    spectra_table = tables["spectra"].set_index(["phase", "layer", "scope"])
    assert set(tables["spectra"].layer) == {
        f"blocks.{b}.{m}" for b in (6, 7) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert tables["overlap"].empty  # each inserted matrix trains in one phase only
    for projection in ("attn.proj", "mlp.fc2"):  # inserted as zero: no size or singular vectors to compare with
        row = spectra_table.loc[(1, f"blocks.6.{projection}", "phase")]
        assert np.isnan(row.relative_norm) and np.isnan(row.intruders) and row.numerical_rank >= 1
    # blocks.6.attn.qkv was inserted as a copy of the pretrained blocks.5.attn.qkv and froze after phase 1
    copied = load_file(str(random_backbones["offline_vit"]))["blocks.5.attn.qkv.weight"].double()
    trained = load_file(str(folder.checkpoint))["backbone.blocks.6.attn.qkv.weight"].double()
    expected = float((trained - copied).norm() / copied.norm())
    for phase, scope in ((1, "phase"), (1, "cumulative")):
        assert spectra_table.loc[(phase, "blocks.6.attn.qkv", scope), "relative_norm"] == pytest.approx(expected)


def test_a_kill_between_the_updates_file_and_the_commit_resumes_to_the_same_files(
    runs, random_backbones, tmp_path, monkeypatch
):
    config = _config(random_backbones["offline_vit"], tmp_path, "topk", **{"method.name": "topk", "method.k": 1})
    commit = RunFolder.commit

    def killed_before_phase_2s_commit(self, index, *args):
        if index == 2:
            (self.path / "updates" / ".digits.safetensors.x.partial").write_bytes(b"half")  # a write cut short
            raise KeyboardInterrupt
        return commit(self, index, *args)

    monkeypatch.setattr(RunFolder, "commit", killed_before_phase_2s_commit)
    with pytest.raises(KeyboardInterrupt):
        run(config, log=lambda message: None)
    folder = RunFolder(config.run_dir)
    assert folder.completed_tasks() == 1 and (folder.path / "updates" / "digits.safetensors").exists()
    monkeypatch.setattr(RunFolder, "commit", commit)
    run(config, log=lambda message: None)
    clean = runs["topk"]
    assert sorted(p.name for p in (folder.path / "updates").iterdir()) == [
        "digits.safetensors",
        "fontfamily.safetensors",
    ]
    for name in ("fontfamily", "digits"):  # the same bytes as the uninterrupted run's
        path = run_updates.updates_path(folder, name)
        assert path.read_bytes() == run_updates.updates_path(clean, name).read_bytes()
    folder.verify()  # every committed file, the updates included, matches its hash
    _check_all_rows(folder, explain(folder.path, parts="attribution", **QUIET)["attribution"])


def test_a_run_without_stored_updates_is_refused_in_one_line(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.yaml").write_text(config_module.dump(config_module.resolve({}, ["method.name=topk"])))
    write_json(full / "progress.json", {"completed_tasks": 1, "total_tasks": 1})
    assert main(["explain", str(full)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "save.updates=true" in error and "topk run" in error
    with pytest.raises(config_module.ConfigError, match="save.updates' must be true or false"):
        config_module.resolve({}, ["save.updates=sometimes"])


def test_a_resnets_convolutions_are_read_as_out_by_in_kh_kw_matrices(random_backbones, tmp_path):
    folder = _run(
        random_backbones["offline_resnet"], tmp_path, "resnet", **{"method.name": "full", "data.tasks": "[digits]"}
    )
    tables = explain(folder.path, **QUIET)
    totals = tables["attribution"].set_index("unit").loc["all"]
    assert totals.agreement_pct == 100.0 and totals.applied_accuracy_pct == pytest.approx(
        100 * folder.read_matrix().values[1][0], abs=1e-9
    )
    backbone = load_backbone(folder_config(folder).backbone).model
    rows = tables["spectra"][tables["spectra"].scope == "phase"].set_index("layer")
    convolutions = {name: m for name, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(rows.index) == set(convolutions)  # every convolution trained (the upstream fc never does)
    for name, module in convolutions.items():
        out_channels, in_channels, kh, kw = module.weight.shape
        assert (rows.loc[name, "rows"], rows.loc[name, "cols"]) == (out_channels, in_channels * kh * kw)
        assert rows.loc[name, "numerical_rank"] <= min(out_channels, in_channels * kh * kw)


@pytest.mark.parametrize("method", ["full", "block_expansion"])
def test_explain_drift_rebuilds_the_runs_own_drift_from_its_stored_updates(runs, method):
    """``--parts drift`` of a run of another method replays its stored updates (block expansion: its
    inserted blocks too) and gives the CKA per unit and phase the run wrote while it ran."""
    folder = runs[method]
    rebuilt = explain(folder.path, parts="drift", **QUIET)["drift"]
    during = pd.read_csv(folder.path / "drift.csv")
    assert list(rebuilt.phase) == list(during.phase) and list(rebuilt.unit) == list(during.unit)
    assert sorted(set(rebuilt.phase)) == [0, 1, 2] and (rebuilt[rebuilt.phase == 0].cka == 1.0).all()
    assert (rebuilt[rebuilt.phase > 0].cka < 1.0).any()  # the updates changed the features
    assert np.abs(rebuilt.cka.to_numpy() - during.cka.to_numpy()).max() < 1e-6
