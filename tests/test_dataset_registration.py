"""A dataset is one registration: a dataset of a module outside forgetlab, registered through the public
decorator, is found by its folder, built as tasks and checked by ``forgetlab data check``; every dataset
class keeps the dataset protocol, and its fingerprint is the one the caches have always keyed on."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch

import forgetlab
from forgetlab import data_check
from forgetlab.config import DataConfig
from forgetlab.data import registry
from forgetlab.data.base import (
    ArrayDataset,
    LabelSubset,
    SampleSubset,
    TaskData,
    TaskDataset,
    dataset_fingerprint,
    dataset_labels,
)
from forgetlab.data.files import ArrayImageDataset, FileDataset, dataset_folder
from forgetlab.errors import ConfigError

HOW = "unpack shapes.tar.gz from the lab's share there"


@pytest.fixture
def shapes(monkeypatch, tmp_path):
    """The example of docs/extending.md, registered for one test only, with its folder under ``tmp_path``."""
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))

    @forgetlab.register_dataset(
        "shapes", folder="shapes", how=HOW, channels=1, splits="train.npz / test.npz", domain=("shape.n.02", "shape")
    )
    def load(data_config=None, preprocess=None) -> TaskData:
        root = dataset_folder("shapes", data_config)
        splits = {}
        for split in ("train", "test"):
            with np.load(root / f"{split}.npz") as arrays:
                splits[split] = ArrayDataset(arrays["x"], arrays["y"])
        return TaskData(
            name="shapes", classes=["circle", "square", "triangle", "star"], train=splits["train"], test=splits["test"]
        )

    folder = tmp_path / "data" / "shapes"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 8)):
        np.savez(
            folder / f"{split}.npz", x=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), y=np.arange(count) % 4
        )
    return DataConfig(root=str(tmp_path / "data"))


def test_a_registered_dataset_is_built_with_what_its_registration_says(shapes):
    task = registry.build_task("shapes", shapes)
    assert (task.num_classes, len(task.train), len(task.test)) == (4, 16, 8)
    assert (task.domain_synset, task.domain_word) == ("shape.n.02", "shape")  # from the registration, not the loader
    half = registry.build_task("shapes:half2", shapes)
    assert (
        half.classes == ["triangle", "star"]
        and sorted(set(dataset_labels(half.train))) == [0, 1]
        and len(half.train) == 8
    )
    assert registry.image_channels("shapes:half1") == 1 and "shapes" in registry.dataset_names()


def test_data_check_reads_the_folder_and_how_from_the_registration(shapes, tmp_path):
    finding, task = data_check.dataset_finding("shapes", lambda: registry.build_task("shapes", shapes), shapes, {})
    assert (finding.status, finding.where, finding.detail) == (
        "ok",
        str(tmp_path / "data" / "shapes"),
        "4 classes, train 16 / test 8 images",
    )
    missing = DataConfig(root=str(tmp_path / "elsewhere"))
    finding, task = data_check.dataset_finding("shapes", lambda: registry.build_task("shapes", missing), missing, {})
    assert finding.status == "MISSING" and task is None and finding.where == str(tmp_path / "elsewhere" / "shapes")
    assert str(finding.error) == f"shapes not found at {tmp_path / 'elsewhere' / 'shapes'}; {HOW}"


def test_a_registration_says_where_its_dataset_comes_from(monkeypatch):
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    loader = lambda data_config=None, preprocess=None: None  # noqa: E731
    with pytest.raises(ValueError, match="give folder= .* or builtin="):
        registry.register_dataset("nowhere")(loader)  # once taken for the offline world
    with pytest.raises(ValueError, match="give folder= .* or builtin="):
        registry.register_dataset("both", folder="x", how="get it", builtin="offline world")(loader)
    with pytest.raises(ValueError, match="give how="):
        registry.register_dataset("silent", folder="x")(loader)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_dataset("digits", builtin="offline world")(loader)
    assert registry.dataset_info("digits").where() == "built-in (offline world)"
    assert registry.dataset_info("cub200").folder == "CUB_200_2011" and registry.dataset_info("cub200").channels == 3
    with pytest.raises(ConfigError, match="unknown dataset 'nowhere'"):
        registry.dataset_info("nowhere")


# ------------------------------------------------------------------------------ the dataset protocol
def _previous_fingerprint(dataset) -> str | None:
    """The fingerprint as it was computed before the protocol: the class guessed by its attributes.
    Every cache keyed by it must keep its key."""
    digest = hashlib.sha256(type(dataset).__name__.encode())
    inner = getattr(dataset, "dataset", None)
    if inner is not None and hasattr(dataset, "positions") and hasattr(dataset, "batch_transform"):
        source = copy.copy(inner)
        source.transform = source.mean = source.std = None
        digest.update(_previous_fingerprint(source).encode())
        digest.update(np.asarray(dataset.positions).tobytes())
        digest.update(np.asarray(dataset_labels(dataset)).tobytes())
        digest.update(repr(dataset.batch_transform).encode())
        return digest.hexdigest()
    if inner is not None and hasattr(dataset, "indices"):
        digest.update(_previous_fingerprint(inner).encode())
        digest.update(np.asarray(dataset.indices).tobytes())
        digest.update(np.asarray(dataset_labels(dataset)).tobytes())
        return digest.hexdigest()
    if hasattr(dataset, "paths"):
        for path in dataset.paths:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        if getattr(dataset, "boxes", None) is not None:
            digest.update(dataset.boxes.tobytes())
    elif hasattr(dataset, "images"):
        images = dataset.images
        digest.update(
            np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)).tobytes()
        )
    digest.update(np.asarray(dataset_labels(dataset)).tobytes())
    digest.update(repr(getattr(dataset, "transform", None)).encode())
    digest.update(repr((getattr(dataset, "mean", None), getattr(dataset, "std", None))).encode())
    return digest.hexdigest()


def test_every_dataset_class_keeps_the_protocol_and_its_fingerprint(tmp_path):
    from PIL import Image
    from torchvision import transforms

    from forgetlab.data.device_pipeline import BatchTransform, EncodedDataset

    paths = []
    for index in range(4):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.full((12, 10, 3), 40 * index, dtype=np.uint8)).save(paths[-1])
    resize = transforms.Compose([transforms.Resize(8), transforms.ToTensor()])
    files = FileDataset(paths, [0, 1, 2, 1], resize, boxes=[[0, 0, 8, 8]] * 4, box_file="boxes.txt")
    arrays = ArrayImageDataset(
        np.zeros((4, 6, 6, 3), dtype=np.uint8) + np.arange(4)[:, None, None, None], [3, 2, 1, 0], resize
    )
    gray = ArrayDataset(np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5), np.array([0, 0, 1, 1]))
    batch = BatchTransform(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    datasets = [
        files,
        arrays,
        gray,
        files.subset(2, seed=1),
        LabelSubset(files, {1: 0, 2: 1}),
        SampleSubset(arrays, [3, 1]),
        LabelSubset(SampleSubset(gray, [0, 2, 3]), {1: 0}),
        EncodedDataset(LabelSubset(files, {1: 0}), batch),
        EncodedDataset(arrays, batch).subset(3, seed=0),
    ]
    prints = []
    for dataset in datasets:
        assert isinstance(dataset, TaskDataset) and len(dataset_labels(dataset)) == len(dataset)
        prints.append(dataset_fingerprint(dataset))
        assert prints[-1] == _previous_fingerprint(dataset), type(dataset).__name__
        assert dataset_fingerprint(dataset.evaluation_view()) == _previous_fingerprint(dataset.evaluation_view())
    assert len(set(prints)) == len(prints)  # each dataset its own key
    assert (
        dataset_fingerprint(torch.utils.data.TensorDataset(torch.zeros(2, 3), torch.zeros(2))) is None
    )  # not forgetlab's: no cache
