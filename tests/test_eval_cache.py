"""The evaluation-crop cache: computed once, then read instead of the files; the same
predictions; an interrupted write leaves nothing; the size limit turns it off with a log line; on both
pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from forgetlab.config import PreprocessConfig
from forgetlab.data.base import LabelSubset
from forgetlab.data.device_pipeline import EncodedDataset, batch_transforms
from forgetlab.data.eval_cache import CROPS_FILE, EvalCrops, EvalCropCache
from forgetlab.data.files import FileDataset, preprocess_for
from forgetlab.evaluate import predict
from forgetlab.models.backbones import create
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.runtime import Runtime

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Twelve JPEGs of several sizes in wnid folders, three classes."""
    folder = tmp_path_factory.mktemp("evalcrops")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(12):
        height, width = [(40, 52), (64, 48), (37, 37)][i % 3]
        (folder / f"n0000000{i % 3}").mkdir(exist_ok=True)
        paths.append(folder / f"n0000000{i % 3}" / f"{i}.JPEG")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1], quality=90)
        labels.append(i % 3)
    return paths, labels


@pytest.fixture(scope="module")
def model_and_preprocess():
    torch.manual_seed(0)
    backbone = create("test_resnet", num_classes=0)  # timm's tiny test network
    model = MultiHeadModel(backbone).eval()
    model.add_head("task", 3)
    return model, preprocess_for(backbone, 32, PreprocessConfig())


def _counting(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("pipeline", ["pil", "device"])
def test_a_second_evaluation_reads_the_cache_with_the_same_predictions(
    files, model_and_preprocess, tmp_path, monkeypatch, pipeline
):
    from forgetlab.data import device_pipeline

    model, pre = model_and_preprocess
    test = LabelSubset(FileDataset(*files, transform=pre.eval), {0: 0, 1: 1, 2: 2})  # a class split over the files
    if pipeline == "device":
        test = EncodedDataset(test, batch_transforms(pre)["eval"])
    cache = EvalCropCache(mode="on", folder=tmp_path, log=print)
    first = cache(test)
    assert isinstance(first, EvalCrops) and np.array_equal(first.labels, np.asarray(files[1]))
    first_predictions = predict(model, "task", first, Runtime(eval_batch_size=6))
    assert first.computed and len(list(tmp_path.glob(f"*/{CROPS_FILE}"))) == 1 and not list(tmp_path.rglob("*.partial"))
    crops = np.load(next(tmp_path.glob(f"*/{CROPS_FILE}")))
    assert crops.dtype == np.uint8 and crops.shape == (12, 3, 32, 32)
    if pipeline == "pil":  # the cache holds the PIL transform's own pixels: predictions unchanged
        assert np.array_equal(first_predictions, predict(model, "task", test, Runtime(eval_batch_size=6)))
        reference = np.asarray(pre.eval.transforms[1](pre.eval.transforms[0](Image.open(files[0][4]).convert("RGB"))))
        assert np.array_equal(crops[4], reference.transpose(2, 0, 1))
    decodes = _counting(monkeypatch, device_pipeline, "decode_batch")
    opens = _counting(monkeypatch, FileDataset, "open_image")
    second = EvalCropCache(mode="on", folder=tmp_path)(test)  # another run: a new cache object, the same key
    again = predict(model, "task", second, Runtime(eval_batch_size=6))
    assert not second.computed and not decodes and not opens and np.array_equal(again, first_predictions)


def test_an_interrupted_write_leaves_no_cache_and_the_limits_turn_it_off(
    files, model_and_preprocess, tmp_path, monkeypatch
):
    model, pre = model_and_preprocess
    test = FileDataset(*files, transform=pre.eval)
    original, calls = FileDataset.open_image, []

    def interrupted(self, index):
        calls.append(index)
        if len(calls) > 5:
            raise KeyboardInterrupt  # a ^C half way through the crops
        return original(self, index)

    monkeypatch.setattr(FileDataset, "open_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(model, "task", EvalCropCache(mode="on", folder=tmp_path)(test), Runtime(eval_batch_size=4))
    assert not list(tmp_path.rglob(CROPS_FILE)) and not list(tmp_path.rglob("*.partial"))
    monkeypatch.setattr(FileDataset, "open_image", original)
    assert isinstance(EvalCropCache(mode="on", folder=tmp_path)(test).open(), EvalCrops)  # the next run writes it whole
    lines = []
    small = EvalCropCache(mode="on", limit_gb=1e-5, folder=tmp_path / "other", log=lines.append)
    assert small(test, what="imagenet test") is test and not (tmp_path / "other").exists()
    assert lines == [
        "forgetlab: imagenet test crops not cached: 12 images at 32 px need "
        "3.69e-05 GB, over data.eval_cache_gb=1e-05; raise it to cache them"
    ]
    assert (
        EvalCropCache(mode="auto", folder=tmp_path)(test) is test
    )  # auto: files on CUDA only; the CPU stays as it was
    assert EvalCropCache(mode="off", folder=tmp_path)(test) is test


def test_the_first_device_pass_evaluates_the_crops_while_it_writes_them(
    files, model_and_preprocess, tmp_path, monkeypatch
):
    """One pass over the files: each batch is decoded once, evaluated from its uint8 crops and written;
    its predictions equal a later pass's over the cache, and a pass closed early leaves no cache."""
    from forgetlab.data import device_pipeline
    from forgetlab.data.eval_cache import evaluation_batches

    model, pre = model_and_preprocess
    test = EncodedDataset(FileDataset(*files, transform=pre.eval), batch_transforms(pre)["eval"])
    cache = EvalCropCache(mode="on", folder=tmp_path, workers=0)
    abandoned, total = evaluation_batches(cache(test), 5, CPU)
    assert total == 3
    next(abandoned)
    abandoned.close()  # an evaluation stopped after its first batch
    assert not list(tmp_path.rglob(CROPS_FILE)) and not list(tmp_path.rglob("*.partial"))
    decodes = _counting(monkeypatch, device_pipeline, "decode_batch")
    first = cache(test)
    assert first.streams()
    first_predictions = predict(model, "task", first, Runtime(eval_batch_size=5))
    assert (
        len(decodes) == 3 and first.computed and len(list(tmp_path.glob(f"*/{CROPS_FILE}"))) == 1
    )  # 12 images, batches of 5
    later = cache(test)
    assert not later.streams() and np.array_equal(
        predict(model, "task", later, Runtime(eval_batch_size=5)), first_predictions
    )
    assert len(decodes) == 3
