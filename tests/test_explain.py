"""``forgetlab explain``: the spectra against hand-made matrices with known answers and against PEFT's
intruder count; the attribution's exactness on tiny runs (reverting every unit gives the pretrained
model's predictions and applying every unit the phase's, image for image, for the LoRA variants and both
policies); the files, their resumption and the one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import forgetlab
from forgetlab import config as config_module
from forgetlab.cli import main
from forgetlab.errors import ConfigError, DataError
from forgetlab.explanation import explain, spectra
from forgetlab.explanation.attribution import paired, unit_of
from forgetlab.explanation.updates import exact_update
from forgetlab.models import lora_layers
from forgetlab.results import read_json, write_json
from forgetlab.runner import run
from forgetlab.unit_features import balanced_indices
from tests.conftest import tiny_overrides

QUIET = {"device": "cpu", "log": lambda message: None}


# ------------------------------------------------------------------------------------------ spectra
def test_effective_and_stable_rank_of_hand_made_spectra():
    assert spectra.effective_rank(np.array([1.0, 1.0, 1.0, 0.0])) == pytest.approx(3.0)
    assert spectra.effective_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, so exp(H) = 2 ** 1.5 (Roy & Vetterli's definition)
    assert spectra.effective_rank(spectra.singular_values(np.diag([2.0, 1.0, 1.0]))) == pytest.approx(2**1.5)
    assert spectra.stable_rank(spectra.singular_values(np.diag([2.0, 1.0, 1.0]))) == pytest.approx(1.5)
    assert spectra.stable_rank(np.zeros(3)) == 0.0 and spectra.effective_rank(np.zeros(3)) == 0.0
    assert spectra.relative_norm(2 * np.eye(3), np.eye(3)) == pytest.approx(2.0)


def test_numerical_rank_of_a_rank_r_product_is_r():
    rng = np.random.default_rng(0)
    for rank in (1, 3, 7):
        product = rng.normal(size=(40, rank)) @ rng.normal(size=(rank, 30))
        assert spectra.numerical_rank(spectra.singular_values(product), product.shape) == rank
    assert spectra.numerical_rank(spectra.singular_values(np.zeros((4, 5))), (4, 5)) == 0


def test_subspace_overlap_of_hand_made_bases():
    e = np.eye(6)
    assert spectra.subspace_overlap(e[:, :2], e[:, :2]) == pytest.approx(1.0)
    assert spectra.subspace_overlap(e[:, :2], e[:, 2:4]) == pytest.approx(0.0)
    assert spectra.subspace_overlap(e[:, :2], e[:, :4]) == pytest.approx(
        1.0
    )  # the smaller space lies inside the larger
    diagonal = ((e[:, 0] + e[:, 1]) / math.sqrt(2))[:, None]
    assert spectra.subspace_overlap(e[:, :1], diagonal) == pytest.approx(0.5)
    assert math.isnan(spectra.subspace_overlap(e[:, :0], e[:, :2]))


def test_intruder_count_of_a_hand_made_new_direction():
    pretrained = np.zeros((6, 4))
    pretrained[:4, :4] = np.diag([3.0, 2.0, 1.0, 0.5])  # left singular vectors e1..e4
    new_direction = np.zeros((6, 4))
    new_direction[4, 0] = 10.0  # output e5: orthogonal to every pretrained singular vector
    assert spectra.intruder_count(pretrained, pretrained + new_direction) == 1
    assert spectra.intruder_count(pretrained, pretrained + 0.1 * np.diag([1.0, 1.0, 1.0, 1.0, 0, 0])[:, :4]) == 0


def test_intruder_count_matches_peft():
    """PEFT 0.21's ``reduce_intruder_dimension`` logs how many intruders it finds per layer with the
    paper's defaults (top 10, epsilon 0.5); forgetlab's count on ``W0`` and ``W0 + dW`` is the same."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    counts = []
    for seed, size in enumerate((0.05, 0.5, 3.0, 10.0)):
        torch.manual_seed(seed)
        model = nn.Sequential()
        model.add_module("lin", nn.Linear(24, 32))
        peft_model = peft.get_peft_model(
            model, peft.LoraConfig(r=6, lora_alpha=6, target_modules=["lin"], init_lora_weights=False)
        )
        layer = peft_model.base_model.model.lin
        with torch.no_grad():
            layer.lora_B["default"].weight.mul_(size / layer.lora_B["default"].weight.norm())
        weight = layer.get_base_layer().weight.detach().double().numpy()
        delta = layer.get_delta_weight("default").detach().double().numpy()
        logged = []
        reduce_intruder_dimension(peft_model, logging_sink=logged.append)
        peft_count = next((int(line.rsplit(" ", 1)[1]) for line in logged if "Intruders:" in line), 0)
        counts.append(peft_count)
        assert spectra.intruder_count(weight, weight + delta) == peft_count
    assert max(counts) > 0 and min(counts) == 0  # both outcomes were exercised


@pytest.mark.parametrize("variant", [{}, {"scaling": "rslora"}, {"dora": True}, {"init": "pissa"}])
def test_the_exact_update_is_what_the_merge_adds(variant):
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    layer = lora_layers.wrap(base, 3, 6.0, 0.0, **variant)
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter is not base.weight and parameter is not base.bias:
                parameter.add_(0.3 * torch.randn_like(parameter))
    before = base.weight.detach().double().clone()
    update = exact_update(layer)
    np.testing.assert_allclose(before.numpy() + update, layer.merged_weight().double().numpy(), atol=1e-5)
    if not variant.get("dora"):  # a LoRA update of rank r (PiSSA's: s (B A - B0 A0), rank <= 2r)
        bound = 2 * 3 if variant.get("init") == "pissa" else 3
        assert spectra.numerical_rank(spectra.singular_values(update), update.shape) <= bound


# ------------------------------------------------------------------------------------------ pieces
def test_units_are_timm_blocks_or_modules():
    assert unit_of("blocks.3.attn.qkv") == "blocks.3"
    assert unit_of("layer2.0.conv3") == "layer2.0"
    assert unit_of("layers.1.blocks.0.attn.qkv") == "layers.1.blocks.0"
    assert unit_of("stages.2.blocks.5.mlp.fc1") == "stages.2.blocks.5"
    assert unit_of("head.fc") == "head.fc"
    assert unit_of("blocks.3.attn.qkv", "module") == "blocks.3.attn.qkv"


def test_class_balanced_subset():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    chosen = balanced_indices(labels, 9, seed=0)
    assert len(chosen) == 9 and len(set(chosen)) == 9 and list(chosen) == sorted(chosen)
    assert np.bincount(labels[chosen]).tolist() == [3, 3, 3]
    assert np.bincount(labels[balanced_indices(labels, 15, seed=0)]).tolist() == [6, 3, 6]  # class 1 runs out
    assert len(balanced_indices(labels, 50, seed=0)) == 20


def test_paired_intervals_and_mcnemar():
    first = np.ones(10, dtype=bool)
    second = first.copy()
    second[:2] = False
    result = paired(first, second)
    assert result["accuracy"] == pytest.approx(80.0) and result["difference"] == pytest.approx(-20.0)
    assert result["p"] == pytest.approx(0.5)  # two discordant images, both one way: 2 * 0.5 ** 2
    low, high = result["difference_interval"]
    assert low <= -20.0 <= high and high <= 0.0
    same = paired(first, first)
    assert same["difference_interval"] == (0.0, 0.0) and same["p"] == 1.0


# ------------------------------------------------------------------------------------------ runs
def _run(backbone_file, folder, name, **extra):
    overrides = {"train.lr": 0.05, "data.max_test": 16, **extra}
    return run(
        config_module.resolve({}, tiny_overrides(backbone_file, folder, name=name, **overrides)),
        log=lambda message: None,
    )


@pytest.mark.parametrize(
    "backbone,extra",
    [
        ("offline_vit", {}),
        ("offline_vit", {"method.scaling": "rslora", "method.dora": "true", "method.targets": "q,v"}),
        ("offline_resnet", {"method.init": "pissa", "method.rank": 2}),
        ("offline_vit", {"method.policy": "keep"}),
    ],
)
def test_reverting_every_unit_is_the_pretrained_model_and_applying_every_unit_the_phase_model(
    random_backbones, tmp_path, backbone, extra
):
    folder = _run(random_backbones[backbone], tmp_path, "exact", **extra)
    keep = extra.get("method.policy") == "keep"
    if keep:  # the upstream head sees the bare backbone; the phase model is pretrained + its adapter
        from forgetlab.single_adapter import single_adapter_predictions

        single_adapter_predictions(folder.path, device="cpu", log=lambda message: None)
    tables = explain(folder.path, **QUIET)
    attribution, matrix = tables["attribution"], folder.read_matrix().values
    totals = attribution[attribution.unit == "all"].set_index("phase")
    assert list(totals.index) == [1, 2]
    for phase, row in totals.iterrows():
        assert row.reverted_accuracy_pct == pytest.approx(100 * matrix[0][0], abs=1e-9)
        stored = np.load(
            folder.path / "predictions" / (f"upstream_single_{phase}.npz" if keep else f"upstream_after_{phase}.npz")
        )
        applied = 100 * np.mean(stored["predictions"] == stored["labels"])
        assert row.applied_accuracy_pct == pytest.approx(applied, abs=1e-9)
        assert row.agreement_pct == 100.0  # image for image
    units = attribution[attribution.unit != "all"]
    assert len(units) == 2 * (4 if backbone == "offline_resnet" else 6)
    reverted = units.reverted_accuracy_pct
    assert ((units.reverted_low_pct <= reverted) & (reverted <= units.reverted_high_pct)).all()
    spectra_table = tables["spectra"]
    rank = int(extra.get("method.rank", 4)) * (2 if extra.get("method.targets") == "q,v" else 1)
    if not extra.get("method.dora"):  # DoRA rescales whole rows: its update is not low-rank
        bound = rank * (2 if extra.get("method.init") == "pissa" else 1)
        own = spectra_table[spectra_table.scope == "phase"]
        assert (own.numerical_rank <= bound).all() and (own.numerical_rank >= 1).all()
        cumulative = spectra_table[spectra_table.scope == "cumulative"]
        limit = bound if keep else bound * cumulative.phase
        assert (cumulative.numerical_rank <= limit).all()


@pytest.fixture(scope="module")
def lora_run(random_backbones, tmp_path_factory):
    return _run(random_backbones["offline_vit"], tmp_path_factory.mktemp("explain"), "lora")


def test_files_resume_and_refusals(lora_run, tmp_path):
    out = lora_run.path / "explain"
    tables = explain(lora_run.path, parts="spectra", **QUIET)
    assert set(tables) == {"spectra", "overlap", "singular_values"} and not (out / "attribution.csv").exists()
    spectra_csv = pd.read_csv(out / "spectra.csv")
    assert {
        "phase",
        "layer",
        "scope",
        "numerical_rank",
        "effective_rank",
        "stable_rank",
        "relative_norm",
        "intruders",
    } <= set(spectra_csv)
    assert len(spectra_csv) == 2 * 6 * 2  # phases x qkv matrices x scopes
    overlap = pd.read_csv(out / "overlap.csv")
    assert len(overlap) == 6 and ((overlap.overlap >= 0) & (overlap.overlap <= 1 + 1e-9)).all()
    first = explain(lora_run.path, parts="attribution", images=12, **QUIET)["attribution"]
    assert (first.images == 12).all()
    # a kill after phase 1's file: the rerun computes phase 2 only and writes the same table
    (out / "phases" / "attribution_2.csv").unlink()
    (out / "attribution.csv").unlink()
    again = explain(lora_run.path, parts="attribution", images=12, **QUIET)["attribution"]
    pd.testing.assert_frame_equal(first, again)
    # a damaged part file (cut short, random bytes, emptied) is found by its digest and computed again
    spectra_before = pd.read_csv(out / "spectra.csv")
    (out / "phases" / "attribution_2.csv").write_text((out / "phases" / "attribution_2.csv").read_text()[:300])
    (out / "phases" / "spectra_1.csv").write_bytes(bytes(range(256)) * 4)
    (out / "phases" / "overlap_2.csv").write_text("")
    messages = []
    tables = explain(lora_run.path, images=12, device="cpu", log=messages.append)
    pd.testing.assert_frame_equal(first, tables["attribution"])
    pd.testing.assert_frame_equal(spectra_before, tables["spectra"])
    assert len(tables["overlap"]) == 6
    assert any(
        "attribution_2.csv, spectra_1.csv, overlap_2.csv" in m and "computing them again" in m for m in messages
    ), messages
    settings = (out / "settings.json").read_text()
    (out / "settings.json").write_text("{bad")
    with pytest.raises(DataError, match=r"settings.json is unreadable or not JSON; delete .*explain and explain again"):
        explain(lora_run.path, parts="attribution", images=12, **QUIET)
    (out / "settings.json").write_text(settings)
    with pytest.raises(ConfigError, match="--images 12 --unit block"):
        explain(lora_run.path, parts="attribution", images=20, **QUIET)
    with pytest.raises(ConfigError, match="choose from attribution, spectra"):
        explain(lora_run.path, parts="weights", **QUIET)


def test_cli_and_refusal_of_a_run_without_adapters(lora_run, tmp_path, capsys):
    assert main(["explain", str(lora_run.path), "--parts", "spectra", "--quiet", "--device", "cpu"]) == 0
    assert "spectra.csv (24 rows)" in capsys.readouterr().out
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.yaml").write_text(config_module.dump(config_module.resolve({}, ["method.name=full"])))
    write_json(full / "progress.json", {"completed_tasks": 1, "total_tasks": 1})
    assert main(["explain", str(full)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "method.name=lora" in error
    assert main(["explain", str(lora_run.path), "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err


def test_the_report_shows_where_forgetting_happens(lora_run, tmp_path):
    from forgetlab.reporting.page import write_report

    explain(lora_run.path, parts="attribution,spectra", images=12, **QUIET)
    write_report([lora_run.path], tmp_path / "report", permutations=20, log=lambda message: None)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Where forgetting happens" in page
    assert "n = 12 upstream images" in page and "reproduce the run's predictions on every image" in page
    assert {"explain_attribution_lora.png", "explain_spectra_lora.png"} <= {
        p.name for p in (tmp_path / "report" / "figures").iterdir()
    }


def test_damaged_views_are_refused_or_rebuilt_from_the_committed_files(lora_run, tmp_path):
    """A damaged explain/*.csv is a one-line error naming the file and the command that rebuilds it; a
    damaged drift.csv does not change the drift read back (it comes from the committed phase files)."""
    import shutil

    from forgetlab.analysis.where import explain_tables

    copy = tmp_path / "copy"
    shutil.copytree(lora_run.path, copy)
    explain(copy, parts="attribution,spectra", images=12, **QUIET)
    drift = forgetlab.load_run(copy).drift
    assert len(drift) and set(drift.phase) == {0, 1, 2}
    (copy / "drift.csv").write_text((copy / "drift.csv").read_text()[:60])
    pd.testing.assert_frame_equal(forgetlab.load_run(copy).drift, drift)
    (copy / "explain" / "attribution.csv").write_text("garbage,,,\n")
    with pytest.raises(
        DataError, match=r"attribution.csv lacks the column phase; run 'forgetlab explain .*' to rebuild"
    ):
        explain_tables(copy)
    (copy / "explain" / "spectra.csv").write_bytes(b"\xa9\xff" * 100)
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 2
    explain(copy, parts="attribution,spectra", images=12, **QUIET)  # rebuilds both views from explain/phases
    assert set(explain_tables(copy)) == {"attribution", "spectra"}
    # --images at or above the images the run scored is every image: the same settings as the default
    shutil.rmtree(copy / "explain")
    every = explain(copy, parts="attribution", **QUIET)["attribution"]
    messages = []
    again = explain(copy, parts="attribution", images=10**6, device="cpu", log=messages.append)["attribution"]
    pd.testing.assert_frame_equal(every, again)
    assert (
        any("nothing to do" in m for m in messages) and read_json(copy / "explain" / "settings.json")["images"] is None
    )
    with pytest.raises(ConfigError, match="holds attribution with --images all --unit block"):
        explain(copy, parts="attribution", images=5, **QUIET)


def test_explain_drift_rebuilds_the_runs_own_drift_from_its_adapters(lora_run):
    """``--parts drift`` rebuilds, from the stored adapters alone, the CKA per unit and phase that the run
    wrote while it ran (same probe, same units), and leaves the weight parts alone."""
    tables = explain(lora_run.path, parts="drift", **QUIET)
    assert set(tables) == {"drift"}
    rebuilt = tables["drift"].sort_values(["phase", "unit"]).reset_index(drop=True)
    during = pd.read_csv(lora_run.path / "drift.csv").sort_values(["phase", "unit"]).reset_index(drop=True)
    assert list(rebuilt.phase) == list(during.phase) and list(rebuilt.unit) == list(during.unit)
    assert sorted(set(rebuilt.phase)) == [0, 1, 2] and (rebuilt[rebuilt.phase == 0].cka == 1.0).all()
    assert np.abs(rebuilt.cka.to_numpy() - during.cka.to_numpy()).max() < 1e-6
