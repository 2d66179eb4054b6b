"""Representation drift in a run: drift.csv per phase and unit, its units on both offline backbones,
its values for a frozen backbone and for LoRA, and its rows across a stopped and resumed run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import forgetlab
from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.run_drift import read_rows
from forgetlab.runner import run
from forgetlab.runtime import Runtime
from forgetlab.explanation.drift import drift_of_run
from forgetlab.unit_features import balanced_indices, feature_units, unit_features

from .conftest import random_backbone, tiny_overrides

QUIET = {"log": lambda message: None}


def _drift(folder) -> list[dict]:
    return read_rows(folder.path / "drift.csv")


def test_units_are_every_block_and_every_bottleneck():
    vit, resnet = random_backbone("offline_vit"), random_backbone("offline_resnet")
    assert feature_units(vit) == [f"blocks.{i}" for i in range(6)]
    assert feature_units(resnet) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    images = torch.randn(5, 1, 28, 28)
    for backbone, widths in ((vit, [128] * 7), (resnet, [128, 256, 512, 1024, 1024])):
        model = MultiHeadModel(backbone)
        features = unit_features(
            model,
            torch.utils.data.TensorDataset(images, torch.zeros(5, dtype=torch.long)),
            feature_units(backbone),
            Runtime(eval_batch_size=2),
        )
        assert [tuple(f.shape) for f in features.values()] == [(5, w) for w in widths]
        assert torch.allclose(features["features"], model.features(images), atol=1e-6)
    # the ViT's block unit is the class token of that block's output (timm pools the class token)
    captured = vit.blocks[:3](vit._pos_embed(vit.patch_embed(images)))[:, 0]
    assert torch.allclose(
        unit_features(
            MultiHeadModel(vit),
            torch.utils.data.TensorDataset(images, torch.zeros(5, dtype=torch.long)),
            ["blocks.2"],
            Runtime(eval_batch_size=5),
        )["blocks.2"],
        captured,
        atol=1e-5,
    )


def test_probe_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 3, 17])
    chosen = balanced_indices(labels, 20, seed=0)
    assert np.bincount(labels[chosen], minlength=4).tolist() == [
        6,
        6,
        3,
        5,
    ]  # 3 of class 2 (all it has), the rest spread
    assert np.array_equal(chosen, balanced_indices(labels, 20, seed=0)) and not np.array_equal(
        chosen, balanced_indices(labels, 20, seed=1)
    )
    assert len(balanced_indices(labels, 1000, seed=0)) == len(labels)


def test_linear_probing_leaves_every_unit_at_exactly_one(random_backbones, tmp_path):
    config = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"method.name": "linear"})
    )
    folder = run(config, **QUIET)
    rows = _drift(folder)
    assert forgetlab.load_run(folder.path).drift.to_dict("records") == rows
    assert {row["phase"] for row in rows} == {0, 1, 2}
    assert len(rows) == 3 * 7 and {row["unit"] for row in rows} == {*(f"blocks.{i}" for i in range(6)), "features"}
    assert all(row["cka"] == 1.0 for row in rows)
    with pytest.raises(ConfigError, match="method.name=lora"):
        drift_of_run(folder.path)


@pytest.mark.parametrize("backbone", ["offline_vit", "offline_resnet"])
def test_lora_drift_is_in_unit_interval_and_row_zero_is_one(random_backbones, tmp_path, backbone):
    config = config_module.resolve({}, tiny_overrides(random_backbones[backbone], tmp_path, **{"train.lr": 0.05}))
    folder = run(config, **QUIET)
    rows = _drift(folder)
    assert all(row["cka"] == 1.0 for row in rows if row["phase"] == 0)
    later = [row["cka"] for row in rows if row["phase"] > 0]
    assert len(later) == 2 * (7 if backbone == "offline_vit" else 5)
    assert all(0.0 <= value <= 1.0 for value in later) and min(later) < 0.999  # training moved the features
    # afterwards, from the stored adapters alone: the same rows
    rebuilt = read_rows(drift_of_run(folder.path, device="cpu", log=lambda message: None))
    assert [(r["phase"], r["unit"]) for r in rebuilt] == [(r["phase"], r["unit"]) for r in rows]
    assert [r["cka"] for r in rebuilt] == pytest.approx([r["cka"] for r in rows], abs=1e-6)


def test_drift_off_and_refused_values(random_backbones, tmp_path):
    config = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"eval.probe_images": 0})
    )
    folder = run(config, **QUIET)
    assert not (folder.path / "drift.csv").exists() and not (folder.path / "drift").exists()
    with pytest.raises(ConfigError, match="eval.probe_images"):
        run(
            config_module.resolve(
                {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="bad", **{"eval.probe_images": -1})
            ),
            **QUIET,
        )
    assert not (tmp_path / "bad").exists()


def test_a_stopped_run_resumes_to_the_same_drift(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name="clean", **{"train.lr": 0.05})
    clean_folder = run(config_module.resolve({}, overrides), **QUIET).path
    clean, clean_groups = (clean_folder / "drift.csv").read_bytes(), (clean_folder / "drift_groups.csv").read_bytes()
    stopped = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="stopped", **{"train.lr": 0.05})
    )

    def stop_after_task_1(message: str) -> None:
        if message.startswith("task 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(stopped, log=stop_after_task_1)
    assert {row["phase"] for row in read_rows(stopped.run_dir / "drift.csv")} == {0, 1}
    resumed = run(stopped, **QUIET).path
    assert (resumed / "drift.csv").read_bytes() == clean  # the pretrained features rebuilt, the same numbers
    assert (resumed / "drift_groups.csv").read_bytes() == clean_groups


def test_drift_by_group_is_the_cka_on_the_groups_rows_and_a_group_under_two_images_is_missing():
    """Letters are the classes near the letter domain (the top quartile of Wu-Palmer similarity); the far
    quartile are clothes. The probe: 6 letter images and 1 of a far class, so 'far' has no CKA."""
    from forgetlab.analysis.cka import linear_cka
    from forgetlab.analysis.contextual import class_similarities
    from forgetlab.analysis.drift import near_far_classes
    from forgetlab.data.offline import FASHION_CLASSES, LETTER_SYNSETS
    from forgetlab.run_drift import TOO_FEW, DriftProbe

    synsets = [synset for _, synset in FASHION_CLASSES] + LETTER_SYNSETS
    groups = near_far_classes(class_similarities("letter.n.02", synsets=synsets))
    far_class = int(np.flatnonzero(groups["far"])[0])
    labels = torch.tensor([10, 11, 12, 13, 20, 35, far_class])
    assert groups["near"][labels[:6]].all() and groups["far"][far_class]
    torch.manual_seed(0)
    probe = torch.utils.data.TensorDataset(torch.randn(7, 1, 28, 28), labels)
    before, after = MultiHeadModel(random_backbone("offline_vit")), MultiHeadModel(random_backbone("offline_vit"))
    drift = DriftProbe(probe, Runtime(eval_batch_size=3), lambda: before, log=lambda m: None, class_synsets=synsets)
    drift.rows(before, 0)
    rows = drift.rows(after, 1, domain="letter.n.02")
    grouped = [row for row in rows if "group" in row]
    assert len(grouped) == 2 * 7 and {row["domain"] for row in grouped} == {"letter.n.02"}
    units = feature_units(before.backbone)
    direct = {
        name: unit_features(model, probe, units, Runtime(eval_batch_size=8))
        for name, model in (("0", before), ("1", after))
    }
    near = groups["near"][labels.numpy()]
    for row in grouped:
        if row["group"] == "near":
            expected = linear_cka(direct["0"][row["unit"]][near], direct["1"][row["unit"]][near])
            assert row["images"] == 6 and row["missing"] == "" and row["cka"] == pytest.approx(expected, abs=1e-9)
        else:
            assert row["images"] == 1 and row["missing"] == TOO_FEW and np.isnan(row["cka"])
    # the same model: every group at exactly 1 where it has images
    assert {row["cka"] for row in drift.rows(before, 1, domain="letter.n.02") if row.get("group") == "near"} == {1.0}


def test_a_run_writes_drift_by_group_for_every_phase(random_backbones, tmp_path):
    config = config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"train.lr": 0.05}))
    folder = run(config, **QUIET)
    table = forgetlab.load_run(folder.path).drift_groups
    assert set(table.phase) == {1, 2} and set(table.group) == {"near", "far"}
    assert table.domain.tolist()[0] == "letter.n.02" and set(table[table.phase == 2].domain) == {"digit.n.01"}
    assert len(table) == 2 * 2 * 7 and table.cka.between(0, 1).all() and (table.missing == "").all()
    assert table[table.unit == "features"].cka.tolist() != [1.0] * 4  # training moved the features
