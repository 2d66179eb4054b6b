"""The ``probe`` upstream evaluator: a linear probe refit on the current features of a seeded, class-balanced
subset of the upstream train images. Its accuracy against an independent scikit-learn fit on the same
features, its determinism, its cache, and its place in upstream_eval.json and the lost/misaligned split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import forgetlab
from forgetlab import config as config_module
from forgetlab import runner
from forgetlab.analysis.drift import lost_misaligned_by_group_table, lost_misaligned_table
from forgetlab.data.base import dataset_labels, evaluation_view
from forgetlab.errors import ConfigError
from forgetlab.evaluate import accuracy
from forgetlab.linear_probe import fit_and_predict
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runner import run
from forgetlab.unit_features import balanced_indices

from .conftest import tiny_overrides
from .test_real_data import root  # noqa: F401

QUIET = {"log": lambda message: None}


def _probe_state(backbone, tmp_path, **extra):
    overrides = tiny_overrides(backbone, tmp_path, **{"eval.upstream_evaluator": "probe", **extra})
    state = runner.resolve(config_module.resolve({}, overrides), log=lambda message: None)
    return state, state.evaluate_upstream.evaluators["probe"], MultiHeadModel(state.backbone.model)


def test_the_probe_equals_an_independent_sklearn_fit_and_is_deterministic(random_backbones, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    state, probe, model = _probe_state(random_backbones["offline_vit"], tmp_path, **{"eval.linear_probe_images": 40})
    result = probe(model, state.upstream.test, state.runtime)
    labels = dataset_labels(state.upstream.test)
    assert 0.0 <= result.accuracy <= 1.0 and result.accuracy == accuracy(result.predictions, labels)
    assert result.accuracy > 1 / 36  # random features still hold more than chance of 36 classes
    # independently: the same 40 of the 48 train images (round-robin over the classes, seed 0), in one batch
    chosen = balanced_indices(dataset_labels(state.upstream.train), 40, seed=0)
    assert len(chosen) == 40 < len(state.upstream.train) and np.array_equal(probe.images.indices, chosen)
    train = evaluation_view(state.upstream.train)
    with torch.no_grad():
        model.eval()
        fit = model.features(torch.stack([train[int(i)][0] for i in chosen])).double().numpy()
        test = model.features(torch.stack([image for image, _ in state.upstream.test])).double().numpy()
    scaler = StandardScaler().fit(fit)
    with pytest.warns(UserWarning, match="unique classes"):  # 40 images of 36 classes: sklearn asks if it is one
        reference = LogisticRegression(C=0.316, max_iter=1000).fit(scaler.transform(fit), train.labels[chosen])
    expected = reference.predict(scaler.transform(test))
    assert np.array_equal(result.predictions, expected)
    # the same again from a freshly built evaluator: its fit features read back from the cache, same predictions
    _, again, _ = _probe_state(random_backbones["offline_vit"], tmp_path, **{"eval.linear_probe_images": 40})
    assert np.array_equal(again(model, state.upstream.test, state.runtime).predictions, result.predictions)
    assert probe.computed == 1 and again.computed == 0
    # another seed: other fit images, another cache entry
    _, other, _ = _probe_state(
        random_backbones["offline_vit"], tmp_path, **{"eval.linear_probe_images": 40, "eval.linear_probe_seed": 1}
    )
    assert not np.array_equal(other.images.indices, probe.images.indices)
    assert other.features_key(model, state.runtime) != probe.features_key(model, state.runtime)


def test_a_fit_on_one_class_and_bad_settings_are_refused(random_backbones, tmp_path):
    with pytest.raises(ConfigError, match="eval.linear_probe_images"):
        fit_and_predict(np.ones((4, 3)), np.zeros(4), np.ones((2, 3)), c=1.0, max_iter=10)
    for key, value in (("eval.linear_probe_images", 1), ("eval.linear_probe_c", 0), ("eval.linear_probe_max_iter", 0)):
        with pytest.raises(ConfigError, match=key):
            config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **{key: value}))


def test_the_probe_reaches_every_row_and_is_the_lost_measure(random_backbones, tmp_path):
    extra = {"eval.upstream_evaluator": "[head, knn, probe]", "train.lr": 0.05, "eval.linear_probe_images": 72}
    folder = run(config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **extra)), **QUIET)
    rows = folder.read_upstream_eval()
    assert len(rows) == 3 and all(0.0 <= row["probe"] <= 1.0 and row["accuracy"] == row["head"] for row in rows)
    for row in range(3):
        stored = folder.read_predictions(row)
        assert accuracy(stored["predictions_probe"], stored["labels"]) == rows[row]["probe"]
    table = forgetlab.load_run(folder.path).upstream_evaluators
    assert table[table.evaluator == "probe"].accuracy_pct.tolist() == pytest.approx(
        [100 * row["probe"] for row in rows]
    )
    split = lost_misaligned_table(folder.path, resamples=100)
    assert split.lost_by.tolist() == ["probe", "probe"]
    for phase, record in zip((1, 2), split.itertuples()):
        assert record.lost_pp == pytest.approx(100 * (rows[0]["probe"] - rows[phase]["probe"]), abs=1e-9)
        assert record.lost_pp + record.misaligned_pp == pytest.approx(
            100 * (rows[0]["head"] - rows[phase]["head"]), abs=1e-9
        )
    groups = lost_misaligned_by_group_table(folder.path, resamples=50)
    assert len(groups) and set(groups.lost_by) == {"probe"}
    page = forgetlab.report([folder.path], out=tmp_path / "report", permutations=20, log=lambda message: None)
    assert "(lost: the linear probe's drop)" in (page.parent / "report.md").read_text()


def test_a_frozen_backbone_keeps_its_probe_accuracy_and_reads_its_features_back(random_backbones, tmp_path):
    from forgetlab import caches

    cached = lambda: set(caches.folder("probe-features").glob("*.safetensors"))  # noqa: E731
    before = cached()
    extra = {"method.name": "linear", "eval.upstream_evaluator": "[probe, head]", "eval.linear_probe_images": 73}
    folder = run(
        config_module.resolve({}, tiny_overrides(random_backbones["offline_resnet"], tmp_path, **extra)), **QUIET
    )
    rows = folder.read_upstream_eval()
    assert len(rows) == 3 and len({row["probe"] for row in rows}) == 1
    assert all(row["accuracy"] == row["probe"] for row in rows)  # probe first: the matrix keeps it
    assert len(cached() - before) == 1  # one backbone state in three rows: its fit features written once


def test_data_check_names_the_probe_as_a_reader_of_the_upstream_train_split():
    from forgetlab.data_check import _upstream_train_needs

    config = config_module.resolve({}, ["eval.upstream_evaluator=[head, probe]"])
    assert _upstream_train_needs(config) == ["eval.upstream_evaluator=probe (the linear probe's fit images)"]


@pytest.mark.parametrize("eval_cache", ["off", "on"])
def test_the_probe_reads_the_device_pipelines_encoded_images_and_their_crops(root, tmp_path, eval_cache):  # noqa: F811
    """ImageNet's 4 train images (labels 0, 0, 1, 2) through the device pipeline: the fit images are 3 of them,
    batched as the train split batches (encoded JPEG bytes, or their cached crops)."""
    overrides = [
        f"data.root={root}",
        "backbone.name=test_vit",
        "backbone.random_init=true",
        "backbone.image_size=32",
        "backbone.num_classes=3",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        "data.max_train=4",
        "data.max_test=4",
        "data.pipeline=device",
        f"data.eval_cache={eval_cache}",
        "device=cpu",
        "eval.upstream_evaluator=probe",
        "eval.linear_probe_images=3",
        f"out_dir={tmp_path}",
    ]
    state = runner.resolve(config_module.resolve({}, overrides), log=lambda message: None)
    probe, model = state.evaluate_upstream.evaluators["probe"], MultiHeadModel(state.backbone.model)
    assert (type(probe.images).__name__ == "EvalCrops") == (eval_cache == "on")
    result = probe(model, state.upstream.test, state.runtime)
    assert len(result.predictions) == len(state.upstream.test) == 4
    assert result.accuracy == accuracy(result.predictions, dataset_labels(state.upstream.test))
    assert sorted(probe.labels.tolist()) == [0, 1, 2]  # one image of each class
