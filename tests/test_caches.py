"""Every cache under $FORGETLAB_HOME is keyed by everything that determines its content
(:mod:`forgetlab.caches`): the k-NN bank of one backbone is never read for another, a walk over every
config key shows that each key either changes a cache's key or is on that cache's ignore list (with
its reason), and the weights' digest is computed from what changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_real_data import root  # noqa: F401


def _headless(global_pool: str):
    """A headless random test_resnet (the same weights whatever the pooling) in a MultiHeadModel."""
    from forgetlab.config import BackboneConfig
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel

    config = BackboneConfig(name="test_resnet", random_init=True, num_classes=0, kwargs={"global_pool": global_pool})
    return MultiHeadModel(load_backbone(config).model)


def _bank_and_queries():
    """96 px RGB noise under 3 random labels: 60 bank, 30 query images (k-NN accuracies near chance,
    which any change of the features moves)."""
    from forgetlab.data.base import ArrayDataset

    rng = np.random.default_rng(7)

    def images(count):
        return ArrayDataset(rng.integers(0, 256, size=(count, 96, 96, 3), dtype=np.uint8), rng.integers(0, 3, size=count))

    return images(60), images(30)


def _knn(model, bank, queries, cache_dir):
    from forgetlab.evaluate import KNNEvaluator

    evaluator = KNNEvaluator(bank, 3, k=10, ks=(10, 20, 50), cache_dir=cache_dir)
    evaluator(model, queries, batch_size=32, device=torch.device("cpu"), amp_dtype=None)
    return evaluator


def test_a_knn_bank_is_not_shared_between_pooling_settings(tmp_path):
    """Two backbones with the same weights, global_pool avg and max: the second computes its own bank
    (it read the first's, and reported the avg-pooled bank's accuracies, before the key covered the
    backbone's constructor arguments)."""
    bank, queries = _bank_and_queries()
    avg, pooled_max = _headless("avg"), _headless("max")
    assert all(torch.equal(a, b) for a, b in zip(avg.state_dict().values(), pooled_max.state_dict().values()))
    first = _knn(avg, bank, queries, tmp_path)
    second = _knn(pooled_max, bank, queries, tmp_path)
    recomputed = _knn(pooled_max, bank, queries, None)  # no disk cache: the right numbers
    assert first.last != recomputed.last  # the pooling changes the k-NN accuracies on these images
    assert second.computed == 1 and second.last == recomputed.last
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again = _knn(pooled_max, bank, queries, tmp_path)  # a third run with max pooling: the second's bank
    assert again.computed == 0 and again.last == recomputed.last


# ----------------------------------------------------------------------------------- the config walk
def _leaves(cls, prefix=""):
    """``(dotted key, field)`` of every config key of the dataclass ``cls`` (the method section: the
    default method's own keys)."""
    import dataclasses

    from forgetlab.config import DEFAULT_METHOD
    from forgetlab.methods import method_class

    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if key == "method":
            yield from _leaves(method_class(DEFAULT_METHOD["name"]).Config, "method.")
        elif isinstance(field.default_factory, type) and dataclasses.is_dataclass(field.default_factory):
            yield from _leaves(field.default_factory, f"{key}.")
        else:
            yield key, field


# A changed value for every key whose type alone does not give one (the bases' own values for some).
CHANGED = {
    "name": "other", "out_dir": "elsewhere", "device": "cpu", "precision": "bf16",
    "backbone.name": "test_vit2", "backbone.weights": None, "backbone.image_size": 48, "backbone.num_classes": 7,
    "backbone.kwargs": {"global_pool": "avg"},
    "data.upstream": "cifar100", "data.tasks": ["flowers102"], "data.max_train": 3, "data.max_test": 3, "data.root": None,
    "data.split_seed": 3, "data.eval_cache_gb": 8.0, "data.pipeline": "device",
    "preprocess.train_scale": [0.5, 1.0], "preprocess.train_ratio": [1.0, 1.0], "preprocess.train_interpolation": "nearest",
    "preprocess.eval_interpolation": "nearest", "preprocess.crop_pct": 0.5, "preprocess.mean": [0.1, 0.2, 0.3],
    "preprocess.std": [0.3, 0.2, 0.1], "preprocess.upstream_eval": "task", "preprocess.upstream_crop_pct": 0.5,
    "eval.upstream_subset": 2, "eval.upstream_evaluator": "head", "method.name": "full", "method.targets": "mlp",
    "train.task_epochs": {"flowers102": 2}, "train.max_steps": 2, "train.warmup_steps": 2, "track.wandb_group": "g",
    "method.policy": "keep", "method.alpha": 4.0,
}
# The device resolves to the CPU on any machine these tests run on: its part of the keys is the device
# type as resolved, tested by test_the_knn_bank_key_covers_the_resolved_precision_and_device.
RESOLVED_THE_SAME_HERE = {"device"}


def _changed(key, field, value):
    if key in CHANGED:
        return CHANGED[key]
    choices = field.metadata.get("choices")
    if choices:
        return next(choice for choice in choices if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.25
    if isinstance(value, str):
        return f"{value}-other"
    raise AssertionError(f"no changed value for {key}: add it to CHANGED")


def _override(key, value) -> str:
    import json

    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


@pytest.fixture(scope="module")
def bases(root, random_backbones):  # noqa: F811
    """Base configs in which the caches are used: real images (PIL and device pipelines, the upstream
    scored with the backbone's and with the task's transform) and the offline world."""
    real = [f"data.root={root}", "backbone.name=test_vit", "backbone.random_init=true", "backbone.image_size=32",
            "backbone.num_classes=3", "data.upstream=imagenet", "data.tasks=[cifar100]", "data.max_train=4", "data.max_test=4",
            "eval.upstream_evaluator=knn", "data.eval_cache=on", "data.cache_decoded=true", "device=cpu"]  # fmt: skip
    offline = [f"backbone.weights={random_backbones['offline_resnet']}", "backbone.name=offline_resnet", "data.tasks=[digits]",
               "data.max_train=8", "data.max_test=8", "eval.upstream_evaluator=knn", "device=cpu"]  # fmt: skip
    return {"real": real, "real-task-transform": [*real, "preprocess.upstream_eval=task", "data.pipeline=device"],
            "offline": offline, "offline-backbone": ["backbone.name=offline_vit"]}


def _keys(overrides, tmp_path):
    from forgetlab import config as config_module
    from forgetlab import runner

    config = config_module.resolve(None, [*overrides, f"out_dir={tmp_path}"])
    if config.backbone.name in ("offline_vit", "offline_resnet") and config.backbone.weights is None:
        return {"backbones": {runner.offline_backbone_key(config.backbone)}}  # the pretrained backbone: not built here
    return runner.cache_keys(runner.resolve(config, log=lambda message: None))


def test_every_config_key_changes_each_caches_key_or_is_ignored_with_a_reason(bases, tmp_path):
    """Walks every config key: changing it changes a cache's key in some base where the cache is used,
    or the cache's ignore list names it (with its reason); a listed key never changes that key."""
    from forgetlab import caches
    from forgetlab import config as config_module
    from forgetlab.config import RunConfig, to_dict
    from forgetlab.errors import ForgetlabError

    base_keys = {name: _keys(overrides, tmp_path) for name, overrides in bases.items()}
    changes: dict[str, set[str]] = {}  # config key -> the caches whose key it changed
    for key, field in _leaves(RunConfig):
        if key in RESOLVED_THE_SAME_HERE:
            continue
        for name, overrides in bases.items():
            value = config_module.resolve(None, overrides)
            for part in key.split("."):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            try:
                changed = _keys([*overrides, _override(key, _changed(key, field, value))], tmp_path)
            except ForgetlabError:  # a value this base refuses (another weights file's architecture): not used here
                continue
            for cache, used in base_keys[name].items():
                if used and changed.get(cache, set()) != used:
                    changes.setdefault(key, set()).add(cache)
    walked = [key for key, _ in _leaves(RunConfig) if key not in RESOLVED_THE_SAME_HERE]
    for cache in caches.FORMATS:
        listed_but_changed = [key for key in walked if caches.ignored(cache, key) and cache in changes.get(key, ())]
        neither = [key for key in walked if not caches.ignored(cache, key) and cache not in changes.get(key, ())]
        assert (cache, listed_but_changed, neither) == (cache, [], [])
    sections = {key.split(".")[0] for key in walked}
    for cache, entries in caches.IGNORED.items():  # no stale entry: each names a config key or section
        assert all(entry in walked or entry in sections for entry in entries), cache
        assert all(reason for reason in entries.values())
    assert to_dict(RunConfig())  # the walk covered the whole config


def test_the_weights_digest_follows_every_change_and_hashes_only_what_changed():
    """The incremental digest equals a fresh full digest after an optimiser step, a copy_ merge, a
    BatchNorm update in train mode and load_state_dict; with nothing changed it hashes only buffers."""
    from forgetlab.caches import WeightsDigest

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    model.eval()
    digest, buffers = WeightsDigest(), len(list(model.buffers()))
    seen = [digest({"m": model})]
    before = digest.hashed
    assert digest({"m": model}) == seen[0] and digest.hashed - before == buffers  # parameters memoised

    def changed():
        value = digest({"m": model})
        assert value == WeightsDigest()({"m": model}) and value not in seen
        seen.append(value)

    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimiser.step()
    changed()
    with torch.no_grad():
        model[3].weight.copy_(model[3].weight + 1)  # how merge_lora writes a merged weight
    changed()
    model.train()
    model(torch.randn(2, 3, 6, 6))  # BatchNorm's running statistics, without a version bump
    model.eval()
    changed()
    model.load_state_dict({k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()})
    changed()
