"""The presets reproduce the papers' code: every preset value equals docs/PROTOCOL_paper*.md, and every
option the presets use does what it says, checked by hand on tiny models and tiny real-layout data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from forgetlab import config as config_module
from forgetlab.analysis import metrics
from forgetlab.config import DataConfig, PreprocessConfig
from forgetlab.data import build_task
from forgetlab.data.registry import sample_split_indices, task_column
from forgetlab.errors import ConfigError
from forgetlab.presets import PRESETS, markdown, preset_tree
from forgetlab.results import AccuracyMatrix
from forgetlab.runner import run
from forgetlab.runtime import Runtime
from forgetlab.train import hf_warmup_cosine, schedule_lengths
from tests.conftest import random_backbone, tiny_overrides
from tests.test_real_data import root  # noqa: F401  (the tiny real-layout datasets fixture)

CPU = torch.device("cpu")
nan = math.nan


def _resolve(name: str, *overrides: str):
    return config_module.resolve(preset_tree(name), list(overrides))


# ----------------------------------------------------------------------------- the k-NN bank bug
def test_knn_bank_is_read_with_the_deterministic_evaluation_transform(root):  # noqa: F811
    from forgetlab.data.files import preprocess_for
    from forgetlab.evaluate import KNNEvaluator
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel

    backbone = load_backbone(
        config_module.BackboneConfig(name="resnet18", random_init=True, num_classes=0, image_size=32)
    )
    preprocess = preprocess_for(backbone.model, 32, PreprocessConfig())
    task = build_task("imagenet", DataConfig(root=str(root)), preprocess.for_upstream())
    evaluator = KNNEvaluator(task.train, k=1)
    torch.manual_seed(0)
    first, second = evaluator.bank[0][0], evaluator.bank[0][0]
    assert torch.equal(first, second)  # no random crop, flip or jitter: the same image gives the same tensor
    assert not torch.equal(task.train[0][0], task.train[0][0])  # the training view stays augmented
    by_hand = preprocess.upstream_eval(Image.open(task.train.paths[0]).convert("RGB"))
    assert torch.equal(first, by_hand)
    model = MultiHeadModel(backbone.model).eval()
    evaluator(model, task.test, Runtime(eval_batch_size=4))
    bank = next(iter(evaluator._cache.values()))
    with torch.no_grad():
        hand = torch.nn.functional.normalize(model.features(torch.stack([by_hand])), dim=-1)
    assert torch.allclose(bank[:1], hand, atol=1e-6)


def test_knn_on_task_logits_reproduces_paper2s_bug_and_backbone_features_are_the_default(root):  # noqa: F811
    from forgetlab.data.files import preprocess_for
    from forgetlab.evaluate import KNNEvaluator
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel

    backbone = load_backbone(
        config_module.BackboneConfig(name="resnet18", random_init=True, num_classes=0, image_size=32)
    )
    task = build_task(
        "imagenet", DataConfig(root=str(root)), preprocess_for(backbone.model, 32, PreprocessConfig()).for_upstream()
    )
    model = MultiHeadModel(backbone.model).eval()
    buggy = KNNEvaluator(task.train, k=1, features="task_logits")
    buggy(model, task.test, Runtime(eval_batch_size=4))
    assert next(iter(buggy._cache.values())).shape[1] == model.num_features  # no task head yet: backbone features
    model.add_head("cifar100", 7)
    buggy(model, task.test, Runtime(eval_batch_size=4))
    assert next(iter(buggy._cache.values())).shape[1] == 7  # the 7-d classifier outputs, as the paper's code did
    correct = KNNEvaluator(task.train, k=1)
    correct(model, task.test, Runtime(eval_batch_size=4))
    assert next(iter(correct._cache.values())).shape[1] == model.num_features
    assert config_module.resolve({}).eval.knn_features == "backbone"


# ----------------------------------------------------------------------------- splits
def test_paper1_splits_by_default_and_the_others_by_name(root):  # noqa: F811
    data = DataConfig(root=str(root))
    assert len(build_task("flowers102", data).train) == 2 and len(build_task("flowers102:trainval", data).train) == 4
    assert (
        len(build_task("fgvc_aircraft", data).train) == 2 and len(build_task("fgvc_aircraft:trainval", data).train) == 3
    )
    cropped, whole = build_task("cub200", data), build_task("cub200:nocrop", data)
    # Image 1 is 24 x 20 with the box x=2, y=3, w=10, h=8 (bounding_boxes.txt): cropped before any transform.
    assert cropped.train[0][0].size == (10, 8) and whole.train[0][0].size == (24, 20)
    raw = np.asarray(Image.open(whole.train.paths[0]).convert("RGB"))
    assert np.array_equal(np.asarray(cropped.train[0][0]), raw[3:11, 2:12])
    (root / "CUB_200_2011" / "bounding_boxes.txt").rename(root / "boxes.bak")
    try:
        with pytest.raises(Exception, match="bounding_boxes.txt"):
            build_task("cub200", data)
        assert len(build_task("cub200:nocrop", data).train) == 2
    finally:
        (root / "boxes.bak").rename(root / "CUB_200_2011" / "bounding_boxes.txt")
    with pytest.raises(ConfigError, match="takes: train, trainval"):
        build_task("flowers102:all", data)


def test_sample_halves_follow_paper1s_code_and_keep_the_task():
    # benchmark_factory.py: perm = randperm(N); s1 = perm[:N // 2]; s2 = perm[N // 2:]; pop() trains s2 first.
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3)).numpy()
    assert sample_split_indices(9, "samples_half1", 3).tolist() == sorted(perm[4:].tolist())
    assert sample_split_indices(9, "samples_half2", 3).tolist() == sorted(perm[:4].tolist())
    first80, last20 = sample_split_indices(10, "samples_first80", 0), sample_split_indices(10, "samples_last20", 0)
    assert len(first80) == 8 and len(last20) == 2 and set(first80) | set(last20) == set(range(10))
    assert (
        task_column("stanford_cars:samples_half2") == "stanford_cars" and task_column("cub200:half1") == "cub200:half1"
    )


def test_the_long_setting_trains_one_head_twice_and_tests_on_the_full_test_set(random_backbones, tmp_path):
    tasks = "[digits:samples_half1, fontfamily:samples_half1, digits:samples_half2]"
    config = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="long", **{"data.tasks": tasks})
    )
    folder = run(config, log=lambda message: None)
    matrix = folder.read_matrix()
    assert matrix.columns == ["upstream", "digits", "fontfamily"] and matrix.trained() == [1, 2, 1]
    assert matrix.as_array().shape == (4, 3) and matrix.row_labels()[3] == "after digits:samples_half2"
    records = json.loads(folder.tasks.read_text())
    halves = [r["train_images"] for r in records if r["column"] == "digits"]
    assert sorted(halves) == [24, 24]  # max_train 48, split in two disjoint halves
    from safetensors.torch import load_file

    heads = {key.split(".")[1] for key in load_file(str(folder.checkpoint)) if key.startswith("heads.")}
    assert heads == {"digits", "fontfamily"}  # the second pass reuses the first pass's head
    assert sorted(p.name for p in (folder.path / "adapters").iterdir()) == sorted(
        config.data.tasks
    )  # one adapter per phase
    # Stopped after phase 2 and resumed: the matrix of the uninterrupted run (the shared head is rebuilt once).
    part = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="part", **{"data.tasks": tasks})
    )

    def die_after_phase_2(message: str) -> None:
        if message.startswith("task 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(part, log=die_after_phase_2)
    assert run(part, log=lambda message: None).read_matrix().values == matrix.values


def test_metrics_read_a_matrix_whose_task_is_trained_twice():
    # Phases: t1 (first half), t2, t1 (second half). Columns: upstream, t1, t2.
    a = np.array(
        [
            [0.80, nan, nan],
            [0.70, 0.50, nan],
            [0.65, 0.40, 0.90],
            [0.60, 0.70, 0.60],
        ]
    )
    trained = [1, 2, 1]
    assert metrics.average_accuracy(a, trained) == pytest.approx((0.70 + 0.60) / 2)
    # Only t2 was not trained in the last phase: best 0.90 since it was first trained, final 0.60.
    assert metrics.average_forgetting(a, trained) == pytest.approx(0.30)
    assert metrics.backward_transfer(a, trained) == pytest.approx(0.60 - 0.90)
    assert metrics.plasticity(a, trained) == pytest.approx((0.50 + 0.90 + 0.70) / 3)
    assert metrics.forward_transfer(a, [nan, 0.45, 0.95], trained) == pytest.approx(((0.50 - 0.45) + (0.90 - 0.95)) / 2)
    # The textbook case is unchanged: the identity mapping is the default.
    square = a[:3]
    assert metrics.plasticity(square) == metrics.plasticity(square, [1, 2]) == pytest.approx((0.50 + 0.90) / 2)
    matrix = AccuracyMatrix(
        columns=["upstream", "t1", "t2"],
        phases=["t1:samples_half1", "t2", "t1:samples_half2"],
        phase_columns=["t1", "t2", "t1"],
    )
    assert matrix.trained() == trained and AccuracyMatrix.from_json(matrix.to_json()).trained() == trained
    with pytest.raises(ValueError, match="phases must train"):
        AccuracyMatrix(columns=["upstream", "t1"], phases=["x"], phase_columns=["t9"])


# ----------------------------------------------------------------------------- preprocessing
def test_preprocessing_is_typed_config_with_timm_transforms():
    from forgetlab.data.files import preprocess_for
    from forgetlab.models.backbones import create

    vit = preprocess_for(
        create("vit_base_patch16_224.augreg_in1k", num_classes=0), None, _resolve("paper1-vit").preprocess
    )
    crop = vit.train.transforms[0]
    assert crop.scale == (0.08, 1.0) and str(vit.train.transforms[2]).startswith("ColorJitter")
    assert vit.eval.transforms[0].size == 248 and vit.eval.transforms[1].size == (224, 224)  # 224 / 0.9, bicubic
    dino = preprocess_for(
        create("vit_base_patch16_224.dino", num_classes=0), None, _resolve("paper2-linear").preprocess
    )
    assert (
        dino.train.transforms[0].scale == (0.08, 1.0) and len(dino.train.transforms) == 4
    )  # crop, flip, tensor, normalise
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    # CIFAR test: resize to (224, 224), no crop, mean = std = 0.5 (peft-vit src/data.py:181-189).
    import torchvision.transforms as T

    expected = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(image)
    assert torch.allclose(dino.eval(image), expected, atol=1e-6)
    # The k-NN's ImageNet transform: resize 256 bicubic, centre crop 224, ImageNet mean/std.
    upstream = dino.upstream_eval.transforms
    assert upstream[0].size == 256 and upstream[0].interpolation.value == "bicubic" and upstream[1].size == (224, 224)
    assert torch.allclose(upstream[-1].mean, torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ConfigError, match="train_scale"):
        config_module.resolve({}, ["preprocess.train_scale=[0.5, 0.2]"])
    with pytest.raises(ConfigError, match="eval_crop"):
        config_module.resolve({}, ["preprocess.eval_crop=border"])
    assert PreprocessConfig().train_scale == [0.08, 1.0]


# ----------------------------------------------------------------------------- schedules and selection
def test_hf_cosine_schedule_and_step_counts_match_the_papers_code():
    factor = hf_warmup_cosine(100, 10)
    assert factor(0) == 0.0 and factor(5) == 0.5 and factor(10) == 1.0  # transformers: step / warmup
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0, abs=1e-12)
    assert factor(102) == pytest.approx(0.5 * (1 + math.cos(math.pi * 92 / 90)))  # past the end: it rises again
    cars = _resolve("paper1-vit").train
    # Cars: 8,144 images, batch 32: (8144 // 32) x 20 = 5,080
    # scheduled, ceil -> 255 x 20 = 5,100 trained, 5,080 // 18 warm-up.
    assert schedule_lengths(cars, 8144, math.ceil(8144 / 32), 20) == (5100, 5080, 282)
    dino = _resolve("paper2-lora-r4").train
    assert schedule_lengths(dino, 50_000, 50_000 // 128, 26) == (10_000, 10_000, 500)
    assert schedule_lengths(_resolve("paper2-linear").train, 50_000, 390, 26)[2] == 100


def test_best_checkpoint_selection_puts_back_the_best_weights():
    from forgetlab.selection import BestCheckpoint

    model = torch.nn.Linear(2, 2)
    scores = iter([0.2, 0.9, 0.5])
    selection = BestCheckpoint(2, lambda m: next(scores))
    values = {}
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        if selection.due(step, 5):
            selection.score(model, step)
            values[step] = model.weight.detach().clone()
    assert [s for s, _ in selection.history] == [2, 4, 5] and selection.best_step == 4
    selection.restore_best(model)
    assert torch.equal(model.weight, values[4]) and selection.record()["selected_accuracy"] == 0.9


def test_a_run_with_best_selection_records_it_and_scores_from_the_selected_weights(random_backbones, tmp_path):
    overrides = tiny_overrides(
        random_backbones["offline_vit"],
        tmp_path,
        name="best",
        **{
            "data.tasks": "[digits]",
            "train.max_steps": 4,
            "train.select": "best",
            "train.eval_every": 2,
            "method.name": "linear",
        },
    )
    folder = run(config_module.resolve({}, overrides), log=lambda message: None)
    record = json.loads(folder.tasks.read_text())[0]["selection"]
    assert [s["step"] for s in record["scored"]] == [2, 4]
    best = max(record["scored"], key=lambda s: s["accuracy"])
    assert record["selected_accuracy"] == best["accuracy"]
    assert folder.read_matrix().values[1][1] == pytest.approx(best["accuracy"])  # the matrix is scored from it


# ----------------------------------------------------------------------------- LwF, full rank, block positions
def test_lwf_trains_earlier_heads_only_when_asked(random_backbones, tmp_path):
    from safetensors.torch import load_file

    heads = {}
    for flag in (False, True):
        overrides = tiny_overrides(
            random_backbones["offline_vit"],
            tmp_path,
            name=f"lwf-{flag}",
            **{"lwf.alpha": 5, "lwf.train_earlier_heads": flag, "data.tasks": "[fontfamily, digits]"},
        )
        config = config_module.resolve({}, overrides)
        folder = run(config, log=lambda message: None)
        heads[flag] = load_file(str(folder.checkpoint))
    # Task 1 ran identically in both (nothing earlier to distil); task 2 trained fontfamily's head only with the flag.
    first = run(
        config_module.resolve(
            {},
            tiny_overrides(
                random_backbones["offline_vit"],
                tmp_path,
                name="lwf-one",
                **{"lwf.alpha": 5, "data.tasks": "[fontfamily]"},
            ),
        ),
        log=lambda message: None,
    )
    after_task1 = load_file(str(first.checkpoint))["heads.fontfamily.weight"]
    assert torch.equal(heads[False]["heads.fontfamily.weight"], after_task1)
    assert not torch.equal(heads[True]["heads.fontfamily.weight"], after_task1)
    assert torch.equal(
        heads[True]["backbone.head.weight"], heads[False]["backbone.head.weight"]
    )  # upstream head frozen
    assert _resolve("paper1-vit-lwf").lwf.train_earlier_heads and not _resolve("paper1-vit").lwf.train_earlier_heads


def test_lwf_in_the_long_setting_distils_the_recurring_tasks_own_head(random_backbones, tmp_path, monkeypatch):
    """Paper 1's code (Avalanche's LwF) distils every head learned before the current experience: on a
    task's second pass that includes its own head, whose teacher is the head after the first pass."""
    from forgetlab import runner
    from forgetlab.regularisers.lwf import DistillationLoss

    distilled = []

    class Recorded(DistillationLoss):
        def __init__(self, model, heads, alpha, temperature):
            super().__init__(model, heads, alpha, temperature)
            distilled.append(list(heads))

    monkeypatch.setattr(runner, "DistillationLoss", Recorded)
    tasks = "[digits:samples_half1, fontfamily:samples_half1, digits:samples_half2]"
    run(
        config_module.resolve(
            {},
            tiny_overrides(
                random_backbones["offline_vit"],
                tmp_path,
                name="long-lwf",
                **{"data.tasks": tasks, "lwf.alpha": 5, "lwf.train_earlier_heads": True},
            ),
        ),
        log=lambda message: None,
    )
    assert distilled == [["upstream"], ["upstream", "digits"], ["upstream", "digits", "fontfamily"]]


@pytest.mark.parametrize("backbone,target", [("offline_vit", "attn.qkv"), ("offline_resnet", "conv3")])
def test_fullrank_trains_only_the_lora_target_weights(backbone, target):
    from tests.test_methods import _method, _snapshot, _train_one_task
    from forgetlab.models.multihead import MultiHeadModel

    model = MultiHeadModel(random_backbone(backbone))
    before = _snapshot(model.backbone)
    _train_one_task(model, _method("fullrank"))
    changed = {name for name, tensor in model.backbone.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.endswith(f"{target}.weight") for name in changed)  # weights only: no bias, nothing else
    expected = sum(1 for name in before if name.endswith(f"{target}.weight"))
    assert len(changed) == expected
    assert _resolve("paper1-vit-fullrank").train.weight_decay == 0.0
    with pytest.raises(ConfigError, match="not available at full rank"):
        _method("fullrank", targets="q,v")


def test_block_expansion_positions_follow_paper2s_split():
    from forgetlab.models.expansion import expand_blocks, expansion_positions

    assert [expansion_positions(12, p, split) for p, split in ((1, 11), (2, 6), (3, 4), (4, 3))] == [
        [10],
        [5, 11],
        [3, 7, 11],
        [2, 5, 8, 11],
    ]
    vit = random_backbone("vit_tiny_patch16_224", num_classes=0, img_size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = vit.eval()(images)
    originals = list(vit.blocks)
    assert expand_blocks(vit, 1, split=11) == [11]  # a copy of block 10 between blocks 10 and 11
    assert vit.blocks[10] is originals[10] and vit.blocks[12] is originals[11]
    assert torch.equal(vit.blocks[11].norm1.weight, originals[10].norm1.weight)
    with torch.no_grad():
        assert torch.allclose(vit.eval()(images), reference, atol=1e-6)
    with pytest.raises(ConfigError, match="make them agree"):
        expansion_positions(12, 2, split=11)
    assert _resolve("paper2-block-p1").method.split == 11


# ----------------------------------------------------------------------------- the presets themselves
def _protocol_facts():
    """``(file, fact, key, value, preset pattern)`` of every keyed row of docs/PROTOCOL_paper*.md."""
    facts = []
    for path in sorted((Path(__file__).resolve().parent.parent / "docs").glob("PROTOCOL_paper*.md")):
        keyed = path.read_text().split("## Facts with a config key")[1].split("## ")[0]
        for row in keyed.splitlines():
            cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
            if len(cells) == 5 and cells[1].startswith("`"):
                fact, key, value, presets, source = cells
                assert re.search(r"`[\w/.=-]+\.(py|yaml|sh|md):\d+", source), (
                    path.name,
                    fact,
                    source,
                )  # a file and line
                patterns = [p.strip("` ") for p in presets.split(",")]
                facts.append((path.name, fact, key.strip("`"), yaml.safe_load(value.strip("`")), patterns))
    return facts


def test_every_preset_equals_the_protocol_documents():
    """Every keyed fact of docs/PROTOCOL_paper1.md and _paper2.md holds in every preset it names."""
    import dataclasses
    import fnmatch

    facts = _protocol_facts()
    assert len(facts) > 50 and {f[0] for f in facts} == {"PROTOCOL_paper1.md", "PROTOCOL_paper2.md"}
    checked = 0
    for document, fact, key, value, patterns in facts:
        names = [n for n in PRESETS if any(fnmatch.fnmatch(n, p) for p in patterns)]
        assert names, (document, fact, patterns)
        for name in names:
            node = _resolve(name)
            for part in key.split("."):
                node = getattr(node, part)
            node = dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node
            assert node == value, (document, fact, name, node, value)
            checked += 1
    assert checked > 300


def test_the_presets_hold_the_papers_values():
    for name in (
        "paper1-vit",
        "paper1-resnet",
        "paper1-vit-order2",
        "paper1-vit-long",
        "paper1-vit-lwf",
        "paper1-vit-fullrank",
    ):
        config = _resolve(name)
        assert (config.train.optimizer, config.train.lr, config.train.batch_size, config.precision) == (
            "adamw",
            1e-3,
            32,
            "fp32",
        )
        assert config.train.task_epochs == {"stanford_cars": 20, "flowers102": 60, "fgvc_aircraft": 40, "cub200": 40}
        assert (config.train.schedule, config.train.warmup_fraction) == ("hf_cosine", 1 / 18)
        assert config.preprocess.train_scale == [0.08, 1.0] and config.preprocess.color_jitter == 0.4
        assert config.eval.upstream_evaluator == "head" and config.data.upstream == "imagenet"
        if config.method.name == "lora":
            assert (config.method.dropout, config.method.alpha, config.method.targets, config.method.policy) == (
                0.1,
                None,
                "default",
                "merge",
            )
            assert config.train.weight_decay == 1e-2
        else:
            assert config.train.weight_decay == 0.0
    assert _resolve("paper1-vit").data.tasks == ["stanford_cars", "flowers102", "fgvc_aircraft", "cub200"]
    assert _resolve("paper1-vit-order2").data.tasks == ["fgvc_aircraft", "cub200", "flowers102", "stanford_cars"]
    assert _resolve("paper1-vit").method.rank == 32 and _resolve("paper1-resnet").method.rank == 1
    lwf = _resolve("paper1-vit-lwf").lwf
    assert (lwf.alpha, lwf.temperature, lwf.train_earlier_heads) == (5.0, 2.0, True)
    long = _resolve("paper1-vit-long").data.tasks
    assert [task_column(t) for t in long] == 2 * ["stanford_cars", "flowers102", "fgvc_aircraft", "cub200"]
    assert all(":samples_half1" in t for t in long[:4]) and all(":samples_half2" in t for t in long[4:])
    lrs = {
        "full": 0.005,
        "top3": 0.005,
        "linear": 0.005,
        "lora-r4": 0.05,
        "lora-r8": 0.005,
        "lora-r16": 0.05,
        "block-p2": 0.005,
    }
    for key, lr in lrs.items():
        config = _resolve(f"paper2-{key}")
        assert config.train.lr == lr, key
        assert (config.train.optimizer, config.train.weight_decay, config.train.max_steps, config.train.batch_size) == (
            "sgd",
            0.0,
            10_000,
            128,
        )
        assert (config.train.drop_last, config.train.select, config.train.schedule, config.precision) == (
            True,
            "best",
            "hf_cosine",
            "tf32",
        )
        linear = key == "linear"
        assert (config.train.warmup_steps, config.train.eval_every) == ((100, 250) if linear else (500, 500))
        assert (config.eval.upstream_evaluator, config.eval.knn_k, config.eval.knn_temperature) == ("knn", 20, 0.07)
        p = config.preprocess
        assert (p.train_interpolation, p.color_jitter, p.eval_crop, p.mean, p.std) == (
            "bilinear",
            0.0,
            "squash",
            [0.5] * 3,
            [0.5] * 3,
        )
        assert p.upstream_crop_pct == 0.875
    for rank in (4, 8, 16):
        method = _resolve(f"paper2-lora-r{rank}").method
        assert (method.rank, method.alpha, method.dropout, method.targets) == (rank, rank, 0.0, "q,v")
    assert {p: _resolve(f"paper2-block-p{p}").method.split for p in (1, 2, 3, 4)} == {1: 11, 2: 6, 3: 4, 4: 3}
    assert _resolve("paper2-top3").method.k == 3


def test_every_preset_value_has_a_source_and_the_docs_are_generated_from_them():
    from pathlib import Path

    for preset in PRESETS.values():
        tree = preset.tree
        for key, value, source in preset.table():
            # a file and line of a paper's public code, a protocol document of this repository, or forgetlab's reason
            code = re.match(r"(lora_cl_analysis|peft-vit) [\w/.=*-]+\.(py|yaml|sh|md)(:\d|,| \()", source)
            document = re.match(r"(docs/PROTOCOL_paper[12]\.md) \(", source)
            assert (
                code
                or (document and (Path(__file__).resolve().parent.parent / document.group(1)).exists())
                or ("forgetlab's" in source or source.startswith("unused"))
            ), (preset.name, key, source)
        assert config_module.resolve(tree).name == preset.name
    docs = Path(__file__).resolve().parent.parent / "docs" / "PRESETS.md"
    assert docs.read_text() == markdown() + "\n", "regenerate: forgetlab presets --markdown > docs/PRESETS.md"


def test_every_sweep_file_resolves_and_the_figure_sweeps_cover_the_papers_grid(monkeypatch, tmp_path):
    from pathlib import Path

    from forgetlab.sweep import load_sweep

    monkeypatch.setenv("FORGETLAB_DATA", str(tmp_path))
    files = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))
    sweeps = {f.stem: load_sweep(f) for f in files}
    fig1 = sweeps["paper1_fig1_rank"]
    lora = [c for c in fig1.cells if c.config.method.name == "lora"]
    assert {c.config.method.rank for c in lora} == {1, 2, 4, 6, 8, 16, 32} and {c.config.seed for c in lora} == {
        0,
        1,
        2,
        3,
    }
    # every LoRA cell has its linear probe (same backbone, sequence and seed): the report's FWT reference
    for sweep in (fig1, sweeps["paper1_long"]):
        probes = {(c.config.seed, tuple(c.config.data.tasks)) for c in sweep.cells if c.config.method.name == "linear"}
        assert {(c.config.seed, tuple(c.config.data.tasks)) for c in sweep.cells} == probes
    table = sweeps["paper2_table"]
    assert [c.name for c in table.cells] == [
        "full",
        "top3",
        "linear",
        "lora-r4",
        "lora-r8",
        "lora-r16",
        "block-p1",
        "block-p2",
        "block-p3",
        "block-p4",
    ]
    assert [c.config.train.lr for c in table.cells][3:6] == [0.05, 0.005, 0.05] and table.cells[
        2
    ].config.train.warmup_steps == 100
    assert all(c.config.train.schedule == "hf_cosine" and c.config.backbone.name.startswith("vit") for c in fig1.cells)
    assert {c.config.method.rank for c in sweeps["paper1_fig1_rank_resnet"].cells} == set(range(1, 8))
    lwf = sweeps["paper1_fig2_lwf"].cells
    assert {c.config.lwf.alpha for c in lwf} == {0, 5} and len(lwf) == 7 * 2 * 4
    orders = {tuple(c.config.data.tasks) for c in sweeps["paper1_orders"].cells}
    assert ("fgvc_aircraft", "cub200", "flowers102", "stanford_cars") in orders and len(orders) == 2


def test_single_adapter_predictions_reuse_the_stored_adapters(random_backbones, tmp_path):
    """Phase 1's "pretrained + its adapter alone" is exactly the sequence after phase 1 (merge policy);
    phase 2's differs from the sequence, which carries phase 1's update too."""
    from forgetlab.reporting.page import contextual_rows
    from forgetlab.analysis.collect import RunResult
    from forgetlab.results import read_single_predictions
    from forgetlab.single_adapter import single_adapter_predictions

    config = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="single", **{"train.lr": 0.05})
    )
    folder = run(config, log=lambda message: None)
    with pytest.raises(Exception, match="single-adapter"):
        read_single_predictions(folder, 1)
    written = single_adapter_predictions(folder.path, device="cpu", log=lambda message: None)
    assert [p.name for p in written] == ["upstream_single_1.npz", "upstream_single_2.npz"]
    first = read_single_predictions(folder, 1)
    assert np.array_equal(first["predictions"], folder.read_predictions(1)["predictions"])
    assert np.array_equal(first["labels"], folder.read_predictions(1)["labels"])
    assert single_adapter_predictions(folder.path, device="cpu", log=lambda message: None) == []  # existing files kept
    rows = contextual_rows([RunResult(folder)], permutations=50, after="single")
    assert [row.task for row in rows] == ["fontfamily", "digits"]
    pretrained = folder.read_predictions(0)
    second = read_single_predictions(folder, 2)["predictions"]
    expected = ((pretrained["predictions"] == pretrained["labels"]) & (second != pretrained["labels"])).sum()
    assert rows[1].test.forgotten == expected
