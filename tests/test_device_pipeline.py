"""The real-data path at device speed, checked on the CPU: the batched device pipeline
against the PIL/timm path, random crops inside their ranges, the k-NN vote at every k from one pass,
and k-NN banks reused from disk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from forgetlab import config as config_module
from forgetlab.config import BackboneConfig, DataConfig, PreprocessConfig
from forgetlab.data import build_task
from forgetlab.data.device_pipeline import BatchTransform, EncodedDataset, batch_transforms, encoded
from forgetlab.data.files import FileDataset, preprocess_for
from forgetlab.errors import DataError
from forgetlab.evaluate import KNNEvaluator, knn_predict_many
from forgetlab.models.backbones import create
from forgetlab.runtime import Runtime
from tests.test_real_data import root  # noqa: F401

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smooth_jpegs(tmp_path_factory):
    """Real-layout JPEGs of smooth content at several sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, (height, width) in enumerate([(60, 80), (90, 70), (256, 300), (33, 41)]):
        y, x = np.mgrid[0:height, 0:width]
        image = np.stack(
            [127 + 100 * np.sin(x / 7 + i), 127 + 100 * np.cos(y / 9), 127 + 80 * np.sin((x + y) / 11)], -1
        )
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=95)
    return paths


@pytest.mark.parametrize(
    "backbone,preprocess",
    [
        ("vit_base_patch16_224.augreg_in1k", PreprocessConfig()),
        ("resnet50.a1_in1k", PreprocessConfig()),
        (
            "vit_base_patch16_224.dino",
            PreprocessConfig(
                eval_crop="squash", crop_pct=1.0, eval_interpolation="bilinear", mean=[0.5] * 3, std=[0.5] * 3
            ),
        ),
    ],
)
def test_device_evaluation_matches_the_pil_path(smooth_jpegs, backbone, preprocess):
    pre = preprocess_for(create(backbone, num_classes=0), 64, preprocess)
    files = FileDataset(smooth_jpegs, [0] * len(smooth_jpegs), pre.eval)
    reference = torch.stack([files[i][0] for i in range(len(files))])
    dataset = EncodedDataset(files, batch_transforms(pre)["eval"])
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item[0].dtype == torch.uint8 and item[0].dim() == 1 for item in items)  # workers only read bytes
    batch = dataset.to_batch([item[0] for item in items], [item[2] for item in items], CPU)
    difference = (batch - reference).abs()
    assert batch.shape == reference.shape and difference.mean() < 0.01 and difference.max() < 0.05


def test_random_crops_follow_the_configured_scale_and_ratio():
    transform = BatchTransform(
        size=32, mean=(0.5,) * 3, std=(0.5,) * 3, training=True, scale=(0.25, 0.5), ratio=(0.5, 2.0)
    )
    generator = torch.Generator().manual_seed(0)
    areas, ratios = [], []
    for _ in range(500):
        top, left, height, width = transform.crop_box(200, 300, generator)
        assert 0 <= top and top + height <= 200 and 0 <= left and left + width <= 300
        areas.append(height * width / (200 * 300))
        ratios.append(width / height)
    # Rounding to whole pixels moves the area and ratio by at most a pixel's worth.
    assert (
        0.25 - 0.01 <= min(areas)
        and max(areas) <= 0.5 + 0.01
        and 0.5 - 0.02 <= min(ratios)
        and max(ratios) <= 2.0 + 0.02
    )
    assert max(areas) - min(areas) > 0.2 and max(ratios) / min(ratios) > 3  # the whole range is used
    images = [torch.randint(0, 255, (3, 40, 50), dtype=torch.uint8) for _ in range(6)]
    batch = transform(images, CPU, torch.Generator().manual_seed(1))
    again = transform(images, CPU, torch.Generator().manual_seed(1))
    assert batch.shape == (6, 3, 32, 32) and torch.equal(batch, again)  # seeded: a resumed task augments alike


def test_a_run_on_the_device_pipeline_and_a_corrupt_file(root, tmp_path):  # noqa: F811
    smoke = [
        f"data.root={root}",
        "backbone.random_init=true",
        "backbone.image_size=32",
        "data.max_train=4",
        "data.max_test=4",
        "train.max_steps=2",
        "train.batch_size=2",
        "eval.batch_size=8",
        f"out_dir={tmp_path}",
        "backbone.num_classes=3",
        "data.tasks=[cub200, fgvc_aircraft:samples_half1]",
        "data.pipeline=device",
        "data.workers=0",
    ]
    from forgetlab.presets import preset_tree
    from forgetlab.runner import run

    folder = run(config_module.resolve(preset_tree("paper1-vit"), smoke), log=lambda message: None)
    assert folder.completed_tasks() == 2 and not np.isnan(folder.read_matrix().as_array()[-1]).any()
    record = folder.read_tasks()[0]  # train.max_steps=2: one warm-up step, one steady-state step
    assert record["warmup_seconds"] + record["selection_seconds"] + record["steady_seconds"] == pytest.approx(
        record["train_seconds"], abs=0.02
    )
    seconds = record[
        "steady_seconds"
    ]  # rounded to 0.01 s, the rate to 0.1 img/s: 2 images in [seconds - 0.005, seconds + 0.005]
    assert 2 / (seconds + 0.005) - 0.05 <= record["steady_images_per_second"] <= 2 / max(seconds - 0.005, 1e-9) + 0.05
    task = encoded(
        build_task(
            "cub200",
            DataConfig(root=str(root)),
            preprocess_for(create("resnet18", num_classes=0), 32, PreprocessConfig()),
        ),
        preprocess_for(create("resnet18", num_classes=0), 32, PreprocessConfig()),
    )
    # CUB's boxes crop on the device as on the PIL path: image 1's box is 10 x 8 of its 24 x 20 pixels.
    assert task.train.dataset.boxes is not None
    bad = root / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg at all")
    broken = EncodedDataset(FileDataset([bad], [0]), BatchTransform(size=8, mean=(0.5,) * 3, std=(0.5,) * 3))
    with pytest.raises(DataError, match="cannot decode .*broken.jpg"):
        broken.to_batch([broken[0][0]], [0], CPU)


def test_knn_at_every_k_from_one_pass_equals_one_pass_per_k():
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(3000, 32), dim=-1)
    labels = torch.randint(0, 20, (3000,))
    queries = torch.nn.functional.normalize(torch.randn(500, 32), dim=-1)
    many = knn_predict_many(bank, labels, queries, ks=(10, 20, 100, 200), temperature=0.07, num_classes=20, chunk=128)
    for k in (10, 20, 100, 200):  # the reference: today's algorithm, one top-k and one vote per k
        top, index = (queries @ bank.T).topk(k, dim=-1)
        votes = torch.zeros(len(queries), 20, dtype=torch.float64).scatter_add_(
            1, labels[index], (top.double() / 0.07).exp()
        )
        assert torch.equal(many[k], votes.argmax(dim=-1))


def test_knn_banks_are_reused_from_disk_by_a_later_evaluator(root, tmp_path, monkeypatch):  # noqa: F811
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel

    backbone = load_backbone(BackboneConfig(name="resnet18", random_init=True, num_classes=0, image_size=32))
    task = build_task(
        "imagenet", DataConfig(root=str(root)), preprocess_for(backbone.model, 32, PreprocessConfig()).for_upstream()
    )
    model = MultiHeadModel(backbone.model).eval()
    first = KNNEvaluator(task.train, k=1, cache_dir=tmp_path)
    scored = first(model, task.test, Runtime(eval_batch_size=4))
    accuracy, predictions = scored.accuracy, scored.predictions
    assert first.computed == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    second = KNNEvaluator(task.train, k=1, cache_dir=tmp_path)
    monkeypatch.setattr(
        "forgetlab.evaluate.extract_features",
        _counting(__import__("forgetlab.evaluate", fromlist=["x"]).extract_features),
    )
    rescored = second(model, task.test, Runtime(eval_batch_size=4))
    again, again_predictions = rescored.accuracy, rescored.predictions
    assert second.computed == 0 and again == accuracy and np.array_equal(again_predictions, predictions)
    assert _counting.calls == 1  # only the queries were computed
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(1.5)
    second(model, task.test, Runtime(eval_batch_size=4))
    assert (
        second.computed == 1 and len(list(tmp_path.glob("*.safetensors"))) == 2
    )  # another backbone state: another bank


def _counting(function):
    _counting.calls = 0

    def wrapper(*args, **kwargs):
        _counting.calls += 1
        return function(*args, **kwargs)

    return wrapper


def test_prefetched_makes_the_next_batch_before_handing_over_the_current():
    """The overlap: batch i + 1 is made (inside the side stream's context) before batch i
    reaches the step, and every tensor of a batch is marked for the consumer's stream."""
    import contextlib

    from forgetlab.data.loader import prefetched

    events, marked = [], []

    def produced():
        for i in range(3):
            events.append(f"make {i}")
            yield torch.full((2,), i), torch.tensor([i])

    @contextlib.contextmanager
    def side_stream():
        events.append("side")
        yield

    def hand_over():
        events.append("wait")
        return marked.append

    for images, labels in prefetched(produced(), side_stream, hand_over):
        events.append(f"step {int(labels)}")
    assert events == [
        "side",
        "make 0",
        "wait",
        "side",
        "make 1",
        "step 0",
        "wait",
        "side",
        "make 2",
        "step 1",
        "wait",
        "side",
        "step 2",
    ]
    assert len(marked) == 6 and [int(t[0]) for t in marked[::2]] == [0, 1, 2]


def test_a_failed_compilation_trains_eagerly(monkeypatch, capsys):
    """train.compile=reduce-overhead (CUDA graphs) or on: if compiling fails the task trains eagerly."""
    from torch.utils.data import TensorDataset

    from forgetlab import train as train_module
    from forgetlab.models.multihead import MultiHeadModel

    def broken_compile(model, **options):
        assert options == {"mode": "reduce-overhead"}
        return lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("inductor is unavailable"))

    monkeypatch.setattr(train_module.torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = MultiHeadModel(create("offline_vit", num_classes=36))
    model.add_head("task", 3)
    model.backbone.requires_grad_(False)
    before = model.heads["task"].weight.detach().clone()
    dataset = TensorDataset(torch.randn(8, 1, 28, 28), torch.arange(8) % 3)
    config = config_module.resolve(
        {}, ["train.compile=reduce-overhead", "train.batch_size=4", "train.max_steps=2"]
    ).train
    stats = train_module.train_task(model, "task", dataset, config, Runtime(), seed=0)
    assert stats.steps == 2 and not torch.equal(model.heads["task"].weight, before)
    assert "torch.compile failed (RuntimeError: inductor is unavailable); training eagerly" in capsys.readouterr().out


# ------------------------------------------------------------------ batched augmentation
JITTER = {
    "size": 24,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "training": True,
    "color_jitter": 0.4,
}


def _reference_train(images, params, transform):
    """The per-image reference: crop, F.interpolate (antialiased) across then down, each pass rounded half
    up and clamped to uint8 as PIL's, flip, torchvision's tensor ColorJitter steps in the image's order,
    normalise: what the batched path must equal."""
    from torchvision.transforms import functional as TF

    steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for n, image in enumerate(images):
        top, left, height, width = params["box"][n].tolist()
        crop = image[:, top : top + height, left : left + width][None].float()
        for size in (
            (height, transform.size),
            (transform.size, transform.size),
        ):  # PIL's horizontal pass, then its vertical one
            crop = torch.nn.functional.interpolate(crop, size=size, mode="bicubic", antialias=True, align_corners=False)
            crop = (crop + 0.5).floor().clamp(0, 255)
        crop = (crop[0].flip(-1) if params["flip"][n] else crop[0]) / 255
        for operation in params["order"][n].tolist():
            if operation < 3 or transform.hue:
                crop = steps[operation](crop, float(params["factors"][n, operation]))
        out.append(crop)
    return transform.normalise(torch.stack(out))


def test_batched_augmentation_equals_the_per_image_reference():
    """Crop boxes, flips, jitter factors and orders drawn per image, applied in a few batched kernels,
    equal the per-image reference (torchvision's own tensor functions) to float precision."""
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        for h, w in [(40, 50), (31, 77), (64, 20), (24, 24), (90, 33)]
    ]
    for transform in (
        BatchTransform(**JITTER),
        BatchTransform(**JITTER, hue=0.1),
        BatchTransform(**JITTER, max_elements=1),
    ):
        params = transform.draw([tuple(image.shape[-2:]) for image in images], torch.Generator().manual_seed(3))
        assert (
            params["flip"].any() and not params["flip"].all() and len({tuple(o) for o in params["order"].tolist()}) > 1
        )
        batch = transform.apply(images, params, CPU)
        assert batch.shape == (5, 3, 24, 24)
        difference = (batch - _reference_train(images, params, transform)).abs()
        # Equal to float precision but for the pixels within float error of a rounding boundary (0.06 %): one level
        # off before the jitter, whose factors (up to 1.4 per step) and hue shift enlarge it (0.042 measured).
        assert (difference > 2e-3).float().mean() < 0.005 and difference.max() < 0.05


def test_batched_augmentation_matches_timm_on_pil_images(smooth_jpegs):
    """Antialiasing as PIL's: the same crop and flip through timm's PIL functions agree with the device path
    within 0.5 of 255 on average, and with the three jitter steps within 0.035 on average and 0.1 at most in
    normalised units. PIL's ``Image.blend`` truncates every jitter step to uint8 (half a level darker on
    average per step; torchvision's tensor path, which the device path follows, does not): measured 0.28
    of 255 for the crop alone, 0.025 and 0.066 with the jitter."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from forgetlab.data.device_pipeline import decode_batch

    transform, plain = (
        BatchTransform(**JITTER),
        BatchTransform(**{**JITTER, "mean": (0.0,) * 3, "std": (1.0,) * 3, "color_jitter": 0.0}),
    )
    images = decode_batch(
        [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in smooth_jpegs],
        [str(p) for p in smooth_jpegs],
        CPU,
    )
    params = transform.draw([tuple(image.shape[-2:]) for image in images], torch.Generator().manual_seed(5))
    batch, unjittered = transform.apply(images, params, CPU), plain.apply(images, params, CPU)
    steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    reference, crops = [], []
    for n, path in enumerate(smooth_jpegs):
        top, left, height, width = params["box"][n].tolist()
        with Image.open(path) as image:
            crop = TF.resized_crop(image.convert("RGB"), top, left, height, width, [24, 24], InterpolationMode.BICUBIC)
        crop = TF.hflip(crop) if params["flip"][n] else crop
        crops.append(TF.to_tensor(crop))
        for operation in params["order"][n].tolist():
            crop = steps[operation](crop, float(params["factors"][n, operation])) if operation < 3 else crop
        reference.append(TF.to_tensor(crop))
    assert (unjittered - torch.stack(crops)).abs().mean() * 255 < 0.5
    difference = (batch - transform.normalise(torch.stack(reference))).abs()
    assert difference.mean() < 0.035 and difference.max() < 0.1


def test_augmentation_parameters_follow_timm_in_range_and_distribution():
    """Over 3,000 draws per case, the crop's area fraction and log aspect ratio, the jitter factors and the
    order of the jitter steps have the distributions of timm's PIL path (``RandomResizedCropAndInterpolation
    .get_params`` with Python's random, ``ColorJitter.get_params``): two-sample Kolmogorov-Smirnov and
    chi-square tests at a 0.001 level (fixed seeds, so the outcome is fixed), and every value in range.
    On the 40 x 200 image about half the draws fall back to the centre crop, so the fallback is compared too."""
    import collections
    import random

    from scipy import stats
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision.transforms import ColorJitter

    draws, level = 3000, 1e-3
    for (height, width), scale, ratio in [
        ((200, 300), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((40, 200), (0.15, 1.0), (3 / 4, 4 / 3)),
        ((64, 64), (0.25, 0.5), (0.5, 2.0)),
    ]:
        transform = BatchTransform(**{**JITTER, "scale": scale, "ratio": ratio, "hue": 0.2})
        params = transform.draw([(height, width)] * draws, torch.Generator().manual_seed(11))
        top, left, h, w = params["box"].double().unbind(1)
        assert (top >= 0).all() and (top + h <= height).all() and (left >= 0).all() and (left + w <= width).all()
        random.seed(11)
        image = Image.new("RGB", (width, height))
        timm_boxes = torch.tensor(
            [RandomResizedCropAndInterpolation.get_params(image, scale, ratio) for _ in range(draws)]
        ).double()
        for ours, theirs in [
            (h * w, timm_boxes[:, 2] * timm_boxes[:, 3]),
            ((w / h).log(), (timm_boxes[:, 3] / timm_boxes[:, 2]).log()),
            (top / (height - h + 1), timm_boxes[:, 0] / (height - timm_boxes[:, 2] + 1)),
        ]:
            assert stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > level
        flips = params["flip"].double().mean()
        assert abs(flips - 0.5) < 4 * math.sqrt(0.25 / draws)
    torch.manual_seed(11)
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.2)
    theirs = [
        jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) for _ in range(draws)
    ]
    factors, order = params["factors"].double(), params["order"]
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4 and factors[:, 3].abs().max() <= 0.2
    for column in range(4):
        assert stats.ks_2samp(factors[:, column].numpy(), [t[column + 1] for t in theirs]).pvalue > level
    counts = collections.Counter(tuple(o) for o in order.tolist())
    assert (
        len(counts) == 24 and stats.chisquare(list(counts.values())).pvalue > level
    )  # randperm(4) per image, as torchvision
    first_step = [
        np.bincount(order[:, 0].numpy(), minlength=4),
        np.bincount([int(t[0][0]) for t in theirs], minlength=4),
    ]
    assert stats.chi2_contingency(first_step).pvalue > level


def test_training_time_splits_into_warmup_selection_and_steady_state():
    """tasks.json's steady-state rate: the first min(50, steps // 2) steps are the
    warm-up, scoring for model selection is counted apart, and the three parts add up to the task."""
    import time as time_module

    from torch.utils.data import TensorDataset

    from forgetlab import train as train_module
    from forgetlab.models.multihead import MultiHeadModel
    from forgetlab.selection import BestCheckpoint

    assert [train_module.timed_warmup_steps(n) for n in (1, 2, 12, 100, 1000)] == [0, 1, 6, 50, 50]
    torch.manual_seed(0)
    model = MultiHeadModel(create("offline_vit", num_classes=36))
    model.add_head("task", 3)
    model.backbone.requires_grad_(False)
    dataset = TensorDataset(torch.randn(16, 1, 28, 28), torch.arange(16) % 3)

    def slow_score(scored_model):
        time_module.sleep(0.1)
        return 0.5

    selection = BestCheckpoint(4, slow_score)  # scores at steps 4 (warm-up), 8 and 12 (steady state)
    config = config_module.resolve({}, ["train.compile=off", "train.batch_size=4", "train.max_steps=12"]).train
    stats = train_module.train_task(
        model, "task", dataset, config, Runtime(), seed=0, plan=train_module.TaskPlan(selection=selection)
    )
    assert stats.steps == 12 and stats.steady_examples == 6 * 4 and stats.selection_seconds >= 0.3
    assert stats.warmup_seconds + stats.selection_seconds + stats.steady_seconds == pytest.approx(
        stats.seconds, abs=1e-6
    )
    assert (
        stats.steady_images_per_second == pytest.approx(24 / stats.steady_seconds)
        and stats.steady_seconds < stats.seconds - 0.3
    )
    one = train_module.train_task(
        model,
        "task",
        dataset,
        config_module.resolve({}, ["train.compile=off", "train.max_steps=1"]).train,
        Runtime(),
        seed=0,
    )
    assert (
        one.warmup_seconds == pytest.approx(one.seconds)
        and one.steady_examples == 0
        and math.isnan(one.steady_images_per_second)
    )


def test_compile_auto_takes_cuda_graphs_for_small_batches_and_nothing_on_the_cpu(monkeypatch):
    """train.compile=auto: eager on the CPU (torch.compile never called), CUDA graphs at
    batch <= 32 on CUDA, plain compilation above; the explicit choices as they say."""
    from forgetlab import train as train_module

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    modes = {
        (choice, batch, device.type): train_module.compile_mode(
            config_module.resolve({}, [f"train.compile={choice}", f"train.batch_size={batch}"]).train, device
        )
        for choice in ("auto", "on", "off", "reduce-overhead")
        for batch in (32, 128)
        for device in (CPU, cuda)
    }
    assert (
        modes[("auto", 32, "cpu")] is None
        and modes[("auto", 128, "cpu")] is None
        and modes[("off", 32, "cuda")] is None
    )
    assert modes[("auto", 32, "cuda")] == "reduce-overhead" and modes[("auto", 128, "cuda")] == "default"
    assert modes[("on", 32, "cpu")] == "default" and modes[("reduce-overhead", 128, "cpu")] == "reduce-overhead"
    monkeypatch.setattr(train_module.torch, "compile", lambda *args, **kwargs: pytest.fail("auto compiled on the CPU"))
    model = torch.nn.Linear(2, 2)
    assert train_module.compiled(model, config_module.resolve({}, ["train.batch_size=8"]).train, CPU) is model
