"""Every cache under $FORGETLAB_HOME is keyed by everything that determines its content
(:mod:`forgetlab.caches`): the k-NN bank of one backbone is never read for another, a walk over every
config key shows that each key either changes a cache's key or is on that cache's ignore list (with
its reason), and the weights' digest is computed from what changed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from forgetlab.runtime import Runtime

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
        return ArrayDataset(
            rng.integers(0, 256, size=(count, 96, 96, 3), dtype=np.uint8), rng.integers(0, 3, size=count)
        )

    return images(60), images(30)


def _knn(model, bank, queries, cache_dir):
    """The evaluator (its ``computed`` count) and its accuracy at every k."""
    from forgetlab.evaluate import KNNEvaluator

    evaluator = KNNEvaluator(bank, k=10, ks=(10, 20, 50), cache_dir=cache_dir)
    result = evaluator(model, queries, Runtime(eval_batch_size=32))
    return evaluator, result.at_k


def test_a_knn_bank_is_not_shared_between_pooling_settings(tmp_path):
    """Two backbones with the same weights, global_pool avg and max: the second computes its own bank
    (it read the first's, and reported the avg-pooled bank's accuracies, before the key covered the
    backbone's constructor arguments)."""
    bank, queries = _bank_and_queries()
    avg, pooled_max = _headless("avg"), _headless("max")
    assert all(torch.equal(a, b) for a, b in zip(avg.state_dict().values(), pooled_max.state_dict().values()))
    _, first = _knn(avg, bank, queries, tmp_path)
    second, second_at_k = _knn(pooled_max, bank, queries, tmp_path)
    _, recomputed = _knn(pooled_max, bank, queries, None)  # no disk cache: the right numbers
    assert first != recomputed  # the pooling changes the k-NN accuracies on these images
    assert second.computed == 1 and second_at_k == recomputed
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again, again_at_k = _knn(pooled_max, bank, queries, tmp_path)  # a third run with max pooling: the second's bank
    assert again.computed == 0 and again_at_k == recomputed


def test_the_device_pipelines_bank_is_keyed_by_what_it_reads_not_by_the_unused_pil_transform():
    """A k-NN bank on the device pipeline reads the arrays and applies its own batch transform: the PIL
    transform of the dataset holding the arrays (the training augmentation, for a train split) does not
    change its fingerprint (it did, so a sweep over preprocess.train_* recomputed the same bank), and
    the batch transform it is read with does."""
    from torchvision import transforms

    from forgetlab.data.base import dataset_fingerprint, evaluation_view
    from forgetlab.data.device_pipeline import EncodedDataset, batch_transforms
    from forgetlab.config import PreprocessConfig
    from forgetlab.data.files import ArrayImageDataset, preprocess_for

    images, labels = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8), np.arange(6) % 2
    batch = batch_transforms(preprocess_for(_headless("avg").backbone, 32, PreprocessConfig()))

    def bank(pil_transform, eval_transform):
        return dataset_fingerprint(
            evaluation_view(
                EncodedDataset(ArrayImageDataset(images, labels, pil_transform), batch["train"], eval_transform)
            )
        )

    flip, crop = transforms.RandomHorizontalFlip(1.0), transforms.RandomResizedCrop(32, scale=(0.5, 1.0))
    assert bank(flip, batch["eval"]) == bank(crop, batch["eval"]) == bank(None, batch["eval"])
    assert bank(None, batch["eval"]) != bank(None, batch["train"])


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


# A changed value for every key whose type alone does not give one; a function takes the base's value and
# the walk's files (another weights file, a copy of the data root).
CHANGED = {
    "name": "other",
    "out_dir": "elsewhere",
    "device": "cpu",
    "precision": "bf16",
    # another offline backbone; else a timm backbone with another evaluation transform (bilinear, crop 0.875)
    "backbone.name": lambda value, files: "offline_resnet" if value == "offline_vit" else "resnet18.tv_in1k",
    "backbone.weights": lambda value, files: files["other weights"] if value else files["offline_vit"],
    "backbone.image_size": 48,
    "backbone.num_classes": 7,
    "backbone.kwargs": {"global_pool": "avg"},
    "data.upstream": "cifar100",
    "data.tasks": ["flowers102"],
    "data.max_train": 3,
    "data.max_test": 3,
    "data.root": lambda value, files: files["root"],
    "data.split_seed": 3,
    "data.eval_cache_gb": 8.0,
    "data.pipeline": "device",
    "preprocess.train_scale": [0.5, 1.0],
    "preprocess.train_ratio": [1.0, 1.0],
    "preprocess.train_interpolation": "nearest",
    "preprocess.hflip": 1.0,
    "preprocess.eval_interpolation": "nearest",
    "preprocess.crop_pct": 0.5,
    "preprocess.mean": [0.1, 0.2, 0.3],
    "preprocess.std": [0.3, 0.2, 0.1],
    "preprocess.upstream_eval": "task",
    "preprocess.upstream_crop_pct": 0.5,
    "eval.upstream_subset": 2,
    "eval.upstream_evaluator": "head",
    # the real bases' 4 upstream train images, labels [0, 0, 1, 2]: seed 1 picks the same first image of class 0
    # as seed 0, seed 3 the other one
    "eval.linear_probe_seed": 3,
    "method.name": "full",
    "method.targets": "mlp",
    "train.task_epochs": {"flowers102": 2},
    "train.max_steps": 2,
    "train.warmup_steps": 2,
    "track.wandb_group": "g",
    "method.policy": "keep",
    "method.alpha": 4.0,
}
# The device resolves to the CPU on any machine these tests run on: its part of the keys is the device
# type as resolved, tested by test_the_knn_bank_key_covers_the_resolved_precision_and_device.
RESOLVED_THE_SAME_HERE = {"device"}


@functools.cache
def _documented_choices() -> dict[str, tuple[str, ...]]:
    from forgetlab.config import RunConfig, documented_choices

    return documented_choices(RunConfig)  # Literal types and registry-backed choices alike


def _changed(key, field, value, files):
    if key in CHANGED:
        return CHANGED[key](value, files) if callable(CHANGED[key]) else CHANGED[key]
    choices = _documented_choices().get(key) or ()
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
    scored with the backbone's and with the task's transform, which differ in their interpolation; a
    seeded subset of the upstream test set) and the offline world."""
    real = [
        f"data.root={root}",
        "backbone.name=test_vit",
        "backbone.random_init=true",
        "backbone.image_size=32",
        "backbone.num_classes=3",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        "data.max_train=4",
        "data.max_test=4",
        "eval.upstream_evaluator=[knn, probe]",
        "eval.linear_probe_images=3",
        "data.eval_cache=on",
        "data.cache_decoded=true",
        "device=cpu",
        "preprocess.eval_interpolation=bilinear",
        "eval.upstream_subset=3",
    ]
    offline = [
        f"backbone.weights={random_backbones['offline_resnet']}",
        "backbone.name=offline_resnet",
        "data.tasks=[digits]",
        "data.max_train=8",
        "data.max_test=8",
        "eval.upstream_evaluator=[knn, probe]",
        "eval.linear_probe_images=5",
        "device=cpu",
    ]
    return {
        "real": real,
        "real-task-transform": [
            *real,
            "preprocess.upstream_eval=task",
            "data.pipeline=device",
            "data.cache_decoded=false",
        ],
        "offline": offline,
        "offline-backbone": ["backbone.name=offline_vit", *offline[2:]],
    }


@pytest.fixture(scope="module")
def walk_files(root, random_backbones, tmp_path_factory):  # noqa: F811
    """Values of the walk that are files: weights files (offline_vit's, other weights for offline_resnet)
    and a copy of the data root."""
    import shutil

    from forgetlab.results import save_safetensors
    from tests.conftest import random_backbone

    folder = tmp_path_factory.mktemp("walk")
    shutil.copytree(root, folder / "datasets")
    torch.manual_seed(1)
    save_safetensors(folder / "offline_resnet.safetensors", random_backbone("offline_resnet").state_dict())
    return {
        "offline_vit": str(random_backbones["offline_vit"]),
        "other weights": str(folder / "offline_resnet.safetensors"),
        "root": str(folder / "datasets"),
    }


def _keys(overrides, tmp_path):
    from forgetlab import config as config_module
    from forgetlab import runner

    config = config_module.resolve(None, [*overrides, f"out_dir={tmp_path}"])
    if runner.offline_backbone_key(config.backbone):  # the pretrained offline backbone: not built here, nor the rest
        return {"backbones": {runner.offline_backbone_key(config.backbone)}}
    return runner.cache_keys(runner.resolve(config, log=lambda message: None))


@pytest.fixture
def built_once(monkeypatch):
    """``runner.resolve`` at a walk's pace: each distinct backbone is built once (a function of its config
    section alone: random weights are seeded, files do not change here), the offline world's arrays are
    read once per world (:func:`forgetlab.data.offline.load_arrays`, keyed by the world's folder), and the
    method's check is skipped (a forward pass that can only refuse: the walk then also takes configs it
    would refuse, whose cache keys are computed as any other's). Everything else (tasks, subsets, crops,
    evaluators, the keys themselves) is resolved afresh each time."""
    from forgetlab import runner
    from forgetlab.data import offline

    built, arrays = {}, {}
    load_backbone, build_method, load_arrays = runner.load_backbone, runner.build_method, offline.load_arrays

    def backbone_once(config):
        if repr(config) not in built:
            built[repr(config)] = load_backbone(config)
        return built[repr(config)]

    def unchecked(config):
        method = build_method(config)
        method.check = method.check_loaded = lambda backbone: None
        return method

    def arrays_once(name):
        key = (offline.world_dir(), name)
        if key not in arrays:
            arrays[key] = load_arrays(name)
        return dict(arrays[key])

    monkeypatch.setattr(runner, "load_backbone", backbone_once)
    monkeypatch.setattr(runner, "build_method", unchecked)
    monkeypatch.setattr(offline, "load_arrays", arrays_once)


def _value(config, key):
    for part in key.split("."):
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    return config


def test_every_config_key_changes_each_caches_key_or_is_ignored_with_a_reason(bases, walk_files, built_once, tmp_path):
    """Walks every config key: changing it changes a cache's key in some base where the cache is used,
    or the cache's ignore list names it (with its reason); a listed key never changes that key."""
    import pprint

    from forgetlab import caches
    from forgetlab import config as config_module
    from forgetlab.config import RunConfig
    from forgetlab.errors import ForgetlabError

    walked = [(key, field) for key, field in _leaves(RunConfig) if key not in RESOLVED_THE_SAME_HERE]
    base_configs = {name: config_module.resolve(None, overrides) for name, overrides in bases.items()}
    base_keys = {name: _keys(overrides, tmp_path) for name, overrides in bases.items()}
    assert {cache for keys in base_keys.values() for cache, used in keys.items() if used} == set(caches.FORMATS)
    assert base_keys == {
        name: _keys(overrides, tmp_path) for name, overrides in bases.items()
    }  # nothing changed: same keys
    changes: dict[str, set[str]] = {}  # config key -> the caches whose key it changed
    for key, field in walked:
        for name, overrides in bases.items():
            value = _changed(key, field, _value(base_configs[name], key), walk_files)
            try:
                changed = _keys([*overrides, _override(key, value)], tmp_path)
            except ForgetlabError:  # a value this base refuses (another weights file's architecture): not used here
                continue
            for cache, used in base_keys[name].items():  # a cache the change stops using counts: nothing is reused
                if used and cache in changed and changed[cache] != used:  # (not in it: not computed here)
                    changes.setdefault(key, set()).add(cache)
    wrong = {}  # cache -> (listed keys that changed its key, unlisted keys that did not)
    for cache in caches.FORMATS:
        listed_but_changed = [key for key, _ in walked if caches.ignored(cache, key) and cache in changes.get(key, ())]
        neither = [key for key, _ in walked if not caches.ignored(cache, key) and cache not in changes.get(key, ())]
        if listed_but_changed or neither:
            wrong[cache] = (listed_but_changed, neither)
    assert wrong == {}, pprint.pformat(wrong)
    keys = {key for key, _ in _leaves(RunConfig)}  # the walked keys and those resolved the same on this machine
    sections = {key.split(".")[0] for key in keys}
    stale = {
        cache: [entry for entry, reason in entries.items() if entry not in keys | sections or not reason]
        for cache, entries in caches.IGNORED.items()
    }
    assert stale == {cache: [] for cache in caches.IGNORED}  # each entry names a config key or section, with a reason


def test_the_weights_digest_follows_every_change_and_hashes_only_what_changed():
    """The incremental digest equals a fresh full digest after an optimiser step, a copy_ merge, a
    BatchNorm update in train mode and load_state_dict; with nothing changed it hashes only buffers."""
    from forgetlab.caches import WeightsDigest

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
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
