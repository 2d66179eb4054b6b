"""The papers' datasets, read from the formats researchers hold them in (see PROTOCOLS.md).

All live under one root (``data.root`` or ``$FORGETLAB_DATA``), each in the folder torchvision uses:

=============== ============================ =====================================================
name            folder under the root        splits (train / test)
=============== ============================ =====================================================
imagenet        ``imagenet/val``             test: the 50,000 validation images, as wnid class
                ``imagenet/train`` (optional) folders or flat with ``LOC_val_solution.csv``;
                                             train (wnid folders): the k-NN bank and replay
cifar100        ``cifar-100-python``         ``train`` / ``test`` pickles (50,000 / 10,000)
stanford_cars   ``stanford_cars``            devkit ``cars_train_annos.mat`` / ``cars_test_annos_withlabels.mat``
                                             (8,144 / 8,041)
flowers102      ``flowers-102``              ``setid.mat``: trnid / tstid (1,020 / 6,149);
                                             ``flowers102:trainval``: trnid + valid (2,040)
fgvc_aircraft   ``fgvc-aircraft-2013b``      ``images_variant_train.txt`` / ``_test.txt`` (3,334 / 3,333);
                                             ``fgvc_aircraft:trainval``: ``_trainval.txt`` (6,667)
cub200          ``CUB_200_2011``             ``train_test_split.txt`` (5,994 / 5,794), every image
                                             cropped to ``bounding_boxes.txt``; ``cub200:nocrop``: whole
=============== ============================ =====================================================

The default splits are those paper 1's code loads (PROTOCOLS.md); the others are variants by name.
ImageNet's classes are its wnids in sorted order (the order of every timm ImageNet head), and each
class's synset is its wnid. Downstream tasks name their domain's WordNet concept for the
contextual-forgetting analysis (``car.n.01`` for Cars, ``airplane.n.01`` for Aircraft).
"""

from __future__ import annotations

import csv
import math
import pickle
import re
from pathlib import Path

import numpy as np

from forgetlab.data.base import TaskData
from forgetlab import paths
from forgetlab.data.files import ArrayImageDataset, FileDataset, data_root, decoded_cache, require
from forgetlab.data.registry import register_dataset
from forgetlab.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# name -> (folder, what to do when it is missing)
SOURCES = {
    "imagenet": ("imagenet", "place ILSVRC2012 val/ as wnid folders (or flat, with LOC_val_solution.csv) under it; "
                 "train/ (optional) for the k-NN bank"),
    "cifar100": ("cifar-100-python", "extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there"),
    "stanford_cars": ("stanford_cars", "place cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat there "
                      "(torchvision's layout; the original download is gone, use a mirror such as Kaggle's)"),
    "flowers102": ("flowers-102", "place jpg/, imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ there"),
    "fgvc_aircraft": ("fgvc-aircraft-2013b", "extract fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ there"),
    "cub200": ("CUB_200_2011", "extract CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ there"),
}  # fmt: skip


def dataset_folder(name: str, data_config) -> Path:
    folder, how = SOURCES[name]
    return require(data_root(data_config) / folder, f"{name}", how)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _finish(name, data_config, preprocess, classes, train, test, **metadata) -> TaskData:
    train_transform = preprocess.train if preprocess else None
    eval_transform = preprocess.eval if preprocess else None
    if preprocess is not None and getattr(data_config, "cache_decoded", False):
        # Decode once at the size the eval crop is taken from (e.g. 248 px for a 224 px, 0.9-crop model).
        size = math.ceil(preprocess.input_size[-1] / preprocess.crop_pct)
        folder = paths.home() / "decoded"
        train = decoded_cache(train, size, folder) if isinstance(train, FileDataset) and len(train) else train
        test = decoded_cache(test, size, folder) if isinstance(test, FileDataset) else test
    if train is not None:
        train.transform, train.eval_transform = train_transform, eval_transform
        if data_config is not None and data_config.max_train is not None:
            train = train.subset(data_config.max_train, seed=0)
    test.transform = test.eval_transform = eval_transform
    if data_config is not None and data_config.max_test is not None:
        test = test.subset(data_config.max_test, seed=0)
    if len(test) == 0:
        raise DataError(f"{name}: the test split is empty; check the dataset's files")
    return TaskData(name=name, classes=classes, train=train if train is not None else FileDataset([], []), test=test, **metadata)


# ------------------------------------------------------------------------------------------- ImageNet
def _wnid_folders(folder: Path) -> dict[str, list[Path]]:
    return {d.name: _images_in(d) for d in sorted(folder.iterdir()) if d.is_dir() and re.fullmatch(r"n\d{8}", d.name)}


def read_imagenet_split(folder: Path, wnids: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """``(wnids, paths, labels)`` of an ImageNet split: wnid class folders, or a flat folder with
    Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` starting with the wnid) beside it."""
    by_class = _wnid_folders(folder)
    if not by_class:
        solution = next((p for p in (folder / "LOC_val_solution.csv", folder.parent / "LOC_val_solution.csv") if p.exists()), None)
        if solution is None:
            raise DataError(f"{folder} has no wnid class folders and no LOC_val_solution.csv; see 'forgetlab data check'")
        files = {p.stem: p for p in _images_in(folder)}
        by_class = {}
        with solution.open() as handle:
            for row in csv.DictReader(handle):
                if row["ImageId"] in files:
                    by_class.setdefault(row["PredictionString"].split()[0], []).append(files[row["ImageId"]])
    wnids = wnids or sorted(by_class)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = sorted(set(by_class) - set(index))
    if unknown:
        raise DataError(f"{folder}: classes {unknown[:3]} are not in the label space; the split does not match")
    paths, labels = [], []
    for wnid in sorted(by_class):
        paths += by_class[wnid]
        labels += [index[wnid]] * len(by_class[wnid])
    return wnids, paths, labels


@register_dataset("imagenet")
def imagenet(data_config=None, preprocess=None) -> TaskData:
    from forgetlab import wordnet

    root = dataset_folder("imagenet", data_config)
    wnids, paths, labels = read_imagenet_split(require(root / "val", "imagenet/val", SOURCES["imagenet"][1]))
    train = None
    if (root / "train").exists():
        _, train_paths, train_labels = read_imagenet_split(root / "train", wnids)
        train = FileDataset(train_paths, train_labels)
    names = wordnet.wnid_names(wnids)
    return _finish("imagenet", data_config, preprocess, names, train, FileDataset(paths, labels),
                   class_synsets=wnids, description="ImageNet-1k (ILSVRC2012) validation set")  # fmt: skip


# ------------------------------------------------------------------------------------------- CIFAR-100
# The only globals a CIFAR pickle needs: numpy arrays and their dtypes (and, for a pickle written by
# Python 3 at protocol 2, the codec that rebuilds bytes). Anything else, e.g. os.system, is refused
# before it is called: loading a dataset never runs code from it.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}  # fmt: skip


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR pickle never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle, built from plain types and numpy arrays only (see ``_PICKLE_GLOBALS``)."""
    try:
        with path.open("rb") as handle:
            data = _DataUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise DataError(f"{path} is not a CIFAR-100 pickle ({error}); re-extract cifar-100-python.tar.gz") from error
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a CIFAR-100 pickle (it holds a {type(data).__name__}); re-extract cifar-100-python.tar.gz")
    return data


@register_dataset("cifar100")
def cifar100(data_config=None, preprocess=None) -> TaskData:
    root = dataset_folder("cifar100", data_config)
    meta = _unpickle(require(root / "meta", "cifar-100-python/meta", SOURCES["cifar100"][1]))
    if not isinstance(meta.get("fine_label_names"), list):
        raise DataError(f"{root / 'meta'} lacks 'fine_label_names'; re-extract cifar-100-python.tar.gz")
    splits = {}
    for split in ("train", "test"):
        path = require(root / split, f"cifar-100-python/{split}", SOURCES["cifar100"][1])
        data = _unpickle(path)
        try:
            images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.asarray(data["fine_labels"], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path} lacks CIFAR-100's 'data' (N x 3072 uint8) and 'fine_labels' ({error}); re-extract the archive") from error
        if len(labels) != len(images) or (len(labels) and not 0 <= labels.min() <= labels.max() < 100):
            raise DataError(f"{path} has {len(images)} images but {len(labels)} labels in 0..99; re-extract cifar-100-python.tar.gz")
        splits[split] = ArrayImageDataset(np.ascontiguousarray(images), labels)
    return _finish("cifar100", data_config, preprocess, list(meta["fine_label_names"]), splits["train"], splits["test"],
                   domain_synset="object.n.01", domain_word="object", description="CIFAR-100 (32x32, 100 classes)")  # fmt: skip


# ------------------------------------------------------------------------------------------- Stanford Cars
def _mat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as error:  # scipy raises several types for a bad file
        raise DataError(f"{path} is not a readable .mat file ({type(error).__name__}); re-download it") from error


@register_dataset("stanford_cars")
def stanford_cars(data_config=None, preprocess=None) -> TaskData:
    root = dataset_folder("stanford_cars", data_config)
    how = SOURCES["stanford_cars"][1]
    names = [str(n) for n in np.atleast_1d(_mat(require(root / "devkit" / "cars_meta.mat", "devkit/cars_meta.mat", how))["class_names"])]
    splits = {}
    for split, annotation_file in (("train", root / "devkit" / "cars_train_annos.mat"), ("test", root / "cars_test_annos_withlabels.mat")):
        records = np.atleast_1d(_mat(require(annotation_file, annotation_file.name, how))["annotations"])
        folder = root / f"cars_{split}"
        splits[split] = FileDataset([folder / str(r["fname"]) for r in records], [int(r["class"]) - 1 for r in records])
    return _finish("stanford_cars", data_config, preprocess, names, splits["train"], splits["test"],
                   domain_synset="car.n.01", domain_word="car", description="Stanford Cars (196 models)")  # fmt: skip


# ------------------------------------------------------------------------------------------- Flowers102
FLOWERS_SPLITS = {"train": ["trnid"], "trainval": ["trnid", "valid"]}


@register_dataset("flowers102", variants={"train": "train on trnid only (1,020 images; paper 1's code, the default)",
                                          "trainval": "train on trnid + valid (2,040 images)"})  # fmt: skip
def flowers102(data_config=None, preprocess=None, variant: str = "train") -> TaskData:
    root = dataset_folder("flowers102", data_config)
    how = SOURCES["flowers102"][1]
    labels = np.atleast_1d(_mat(require(root / "imagelabels.mat", "imagelabels.mat", how))["labels"]).astype(int) - 1
    ids = _mat(require(root / "setid.mat", "setid.mat", how))

    def split(keys):
        numbers = sorted(int(i) for key in keys for i in np.atleast_1d(ids[key]))
        return FileDataset([root / "jpg" / f"image_{n:05d}.jpg" for n in numbers], [int(labels[n - 1]) for n in numbers])

    return _finish("flowers102", data_config, preprocess, [f"flower {i + 1}" for i in range(102)], split(FLOWERS_SPLITS[variant]),
                   split(["tstid"]), domain_synset="flower.n.01", domain_word="flower", description="Oxford Flowers102")  # fmt: skip


# ------------------------------------------------------------------------------------------- FGVC-Aircraft
@register_dataset("fgvc_aircraft", variants={"train": "train on images_variant_train.txt (3,334 images; paper 1's code, the default)",
                                             "trainval": "train on images_variant_trainval.txt (6,667 images)"})  # fmt: skip
def fgvc_aircraft(data_config=None, preprocess=None, variant: str = "train") -> TaskData:
    data = dataset_folder("fgvc_aircraft", data_config) / "data"
    how = SOURCES["fgvc_aircraft"][1]
    variants = [line.strip() for line in require(data / "variants.txt", "data/variants.txt", how).read_text().splitlines() if line.strip()]
    index = {v: i for i, v in enumerate(variants)}
    splits = {}
    for split, filename in (("train", f"images_variant_{variant}.txt"), ("test", "images_variant_test.txt")):
        paths, labels = [], []
        for line in require(data / filename, f"data/{filename}", how).read_text().splitlines():
            if line.strip():
                image_id, variant = line.strip().split(" ", 1)
                if variant not in index:
                    raise DataError(f"{data / filename}: variant '{variant}' is not in variants.txt; re-extract the dataset")
                paths.append(data / "images" / f"{image_id}.jpg")
                labels.append(index[variant])
        splits[split] = FileDataset(paths, labels)
    return _finish("fgvc_aircraft", data_config, preprocess, variants, splits["train"], splits["test"],
                   domain_synset="airplane.n.01", domain_word="plane", description="FGVC-Aircraft 2013b (100 variants)")  # fmt: skip


# ------------------------------------------------------------------------------------------- CUB-200-2011
@register_dataset("cub200", variants={"crop": "each image cropped to its bounding_boxes.txt box (paper 1's code, the default)",
                                      "nocrop": "whole images"})  # fmt: skip
def cub200(data_config=None, preprocess=None, variant: str = "crop") -> TaskData:
    root = dataset_folder("cub200", data_config)
    how = SOURCES["cub200"][1]

    def table(name: str) -> dict[int, str]:
        rows = require(root / name, name, how).read_text().split("\n")
        try:
            return {int(k): v for k, v in (row.strip().split(" ", 1) for row in rows if row.strip())}
        except ValueError as error:
            raise DataError(f"{root / name} is malformed ({error}); re-extract CUB_200_2011.tgz") from error

    images, is_train, labels = table("images.txt"), table("train_test_split.txt"), table("image_class_labels.txt")
    boxes = table("bounding_boxes.txt") if variant == "crop" else {}
    classes = [name.split(".", 1)[-1].replace("_", " ") for _, name in sorted(table("classes.txt").items())]
    splits = {"1": ([], [], []), "0": ([], [], [])}
    for image_id, relative in sorted(images.items()):
        paths, split_labels, split_boxes = splits[is_train[image_id]]
        paths.append(root / "images" / relative)
        split_labels.append(int(labels[image_id]) - 1)
        if variant == "crop":
            if image_id not in boxes:
                raise DataError(f"{root / 'bounding_boxes.txt'} has no box for image {image_id}; re-extract CUB_200_2011.tgz or use cub200:nocrop")
            split_boxes.append([float(v) for v in boxes[image_id].split()])
    train, test = (FileDataset(p, l, boxes=b if variant == "crop" else None, box_file=root / "bounding_boxes.txt")
                   for p, l, b in (splits["1"], splits["0"]))  # fmt: skip
    return _finish("cub200", data_config, preprocess, classes, train, test,
                   domain_synset="bird.n.01", domain_word="bird", description="CUB-200-2011 (200 bird species)")  # fmt: skip
