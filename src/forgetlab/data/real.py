"""The papers' datasets, read from the formats researchers hold them in (see docs/PROTOCOL_paper1.md
and docs/PROTOCOL_paper2.md).

All live under one root (``data.root`` or ``$FORGETLAB_DATA``), each in the folder torchvision uses:

=============== ============================ =====================================================
name            folder under the root        splits (train / test)
=============== ============================ =====================================================
imagenet        ``imagenet/val``             test: the 50,000 validation images, as wnid class
                ``imagenet/train``           folders or flat with ``LOC_val_solution.csv``;
                                             train (wnid folders): the k-NN bank and replay
                                             (needed by every paper-2 preset, else optional)
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

The default splits are those paper 1's code loads (docs/PROTOCOL_paper1.md); the others are variants by name.
Files are listed through :func:`forgetlab.data.listing.listed`, which leaves out hidden entries and
operating-system metadata (AppleDouble ``._*`` files, ``.DS_Store``, ``__MACOSX``, ``Thumbs.db``,
``desktop.ini``). ImageNet's classes are its wnids in sorted order (the order of every timm ImageNet head), and each
class's synset is its wnid. Downstream tasks name their domain's WordNet concept for the
contextual-forgetting analysis (``car.n.01`` for Cars, ``airplane.n.01`` for Aircraft).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pickle
import re
import time
from pathlib import Path

import numpy as np

from forgetlab import caches
from forgetlab.data.base import TaskData
from forgetlab.data.files import ArrayImageDataset, FileDataset, dataset_folder, decoded_cache, listed, require
from forgetlab.data.registry import register_dataset
from forgetlab.data.validate import (
    InvalidDataError,
    check_classes,
    check_labels,
    labels_by_name,
    read_rows,
    require_fields,
)
from forgetlab.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

HOW = {
    "imagenet": "place ILSVRC2012 val/ as wnid folders (or flat, with LOC_val_solution.csv) under it, and train/ as "
    "wnid folders where the k-NN bank (every paper-2 preset) or replay reads it",
    "cifar100": "extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there",
    "stanford_cars": "place cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat there "
    "(torchvision's layout; the original download is gone, use a mirror such as Kaggle's)",
    "flowers102": (
        "place jpg/, imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ there"
    ),
    "fgvc_aircraft": (
        "extract fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ there"
    ),
    "cub200": "extract CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ there",
}  # how to get each dataset's folder when it is missing


def _images_in(folder: Path) -> list[Path]:
    """The image files of ``folder`` by suffix, sorted; OS metadata such as AppleDouble ``._x.JPEG``
    files left out (:func:`forgetlab.data.listing.listed`)."""
    return [p for p in listed(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


LISTED_FILES_CHECKED = 200_000  # every split up to this size has each file checked when it loads (ImageNet's train
# split, 1.28 M files found by listing its folders, is not: stat-ing it on a network disk takes minutes)


def _require_files(name: str, dataset) -> None:
    """A file the dataset's annotations list but the folder lacks is a one-line DataError when the task
    loads, before a run writes anything (not a decoding error after the pretrained row is committed)."""
    if isinstance(dataset, FileDataset) and len(dataset.paths) <= LISTED_FILES_CHECKED:
        missing = [path for path in dataset.paths if not path.is_file()]
        if missing:
            raise InvalidDataError(
                f"{missing[0]} is missing ({len(missing):,} of {name}'s {len(dataset.paths):,} listed images are); "
                "re-extract the dataset (forgetlab data check)"
            )


def _finish(name, data_config, preprocess, classes, train, test, **metadata) -> TaskData:
    train_transform = preprocess.train if preprocess else None
    eval_transform = preprocess.eval if preprocess else None
    for split in (train, test):
        _require_files(name, split)
    if preprocess is not None and data_config is not None and data_config.cache_decoded:
        # Decode once at the size the eval crop is taken from (e.g. 248 px for a 224 px, 0.9-crop model).
        size = math.ceil(preprocess.input_size[-1] / preprocess.crop_pct)
        folder = caches.folder("decoded")
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
    return TaskData(
        name=name, classes=classes, train=train if train is not None else FileDataset([], []), test=test, **metadata
    )


# ------------------------------------------------------------------------------------------- ImageNet
WNID = re.compile(r"n\d{8}")
IMAGENET_TRAIN_HOW = (
    "extract ILSVRC2012_img_train.tar (https://image-net.org/download-images, 138 GB) there, each of its "
    "1,000 inner tars into the folder of its wnid (n01440764/ ...): 1,281,167 images"
)
SOLUTION_HOW = (
    "use Kaggle's LOC_val_solution.csv for ILSVRC2012 val (ImageId,PredictionString with the wnid first), "
    "or arrange val/ as wnid class folders"
)


_CLASS_LISTINGS: dict[tuple[str, int], list[Path]] = {}  # (class folder, its mtime) -> its images


def _class_images(folder: Path) -> list[Path]:
    """``_images_in(folder)``, listed once per process while the folder is unchanged (its mtime moves
    when an entry is added, removed or renamed): the run's input check and its loading both list
    ImageNet's 1.28 M training files, which takes minutes on a network disk. A folder changed in the
    last 2 s is listed afresh: file systems stamp times in steps of milliseconds."""
    key = (str(folder), folder.stat().st_mtime_ns)
    if time.time_ns() - key[1] < 2_000_000_000:
        return _images_in(folder)
    if key not in _CLASS_LISTINGS:
        _CLASS_LISTINGS[key] = _images_in(folder)
    return list(_CLASS_LISTINGS[key])


def _wnid_folders(folder: Path) -> dict[str, list[Path]]:
    folders = [d for d in listed(folder) if d.is_dir()]  # hidden folders and __MACOSX left out
    by_class = {d.name: _class_images(d) for d in folders if WNID.fullmatch(d.name)}
    strays = [d.name for d in folders if not WNID.fullmatch(d.name)]
    if by_class and strays:  # a class folder whose name is not a wnid would silently drop its class
        raise InvalidDataError(
            f"{folder} holds folders that are not wnids ({', '.join(strays[:3])}) beside its wnid class folders; "
            "name each class folder by its wnid (e.g. n01440764) and move the others out"
        )
    return by_class


def _read_solution(solution: Path, files: dict[str, Path]) -> dict[str, list[Path]]:
    """Kaggle's flat-val labels: the images of ``files`` (stem -> path) by wnid; every image needs a row."""
    by_class: dict[str, list[Path]] = {}
    labelled = set()
    with solution.open(newline="") as handle:
        reader = csv.DictReader(handle)
        require_fields(reader.fieldnames or [], ["ImageId", "PredictionString"], solution, SOLUTION_HOW)
        for number, row in enumerate(reader, start=2):
            if row["ImageId"] not in files:
                continue
            wnid = (row["PredictionString"] or "").split()[:1]
            if not wnid or not WNID.fullmatch(wnid[0]):
                raise InvalidDataError(
                    f"{solution}, line {number}: image {row['ImageId']} has no wnid (PredictionString "
                    f"'{(row['PredictionString'] or '')[:40]}'); {SOLUTION_HOW}"
                )
            by_class.setdefault(wnid[0], []).append(files[row["ImageId"]])
            labelled.add(row["ImageId"])
    unlabelled = sorted(set(files) - labelled)
    if unlabelled:
        raise InvalidDataError(
            f"{solution} has no row for {len(unlabelled)} of the {len(files)} images in {files[unlabelled[0]].parent} "
            f"(e.g. {unlabelled[0]}); {SOLUTION_HOW}"
        )
    return by_class


def read_imagenet_split(folder: Path, wnids: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """``(wnids, paths, labels)`` of an ImageNet split: wnid class folders, or a flat folder with
    Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` starting with the wnid) beside it.
    ``wnids`` (another split's classes) fixes the label space; otherwise it is this split's wnids,
    sorted. Errors (one line, :class:`DataError`): a class folder that is not a wnid, a solution file
    without those fields or without a row for an image, a class outside ``wnids``."""
    by_class = _wnid_folders(folder)
    where = folder
    if not by_class:
        solution = next(
            (p for p in (folder / "LOC_val_solution.csv", folder.parent / "LOC_val_solution.csv") if p.exists()), None
        )
        if solution is None:
            raise DataError(
                f"{folder} has no wnid class folders and no LOC_val_solution.csv; see 'forgetlab data check'"
            )
        by_class, where = _read_solution(solution, {p.stem: p for p in _images_in(folder)}), solution
    wnids = wnids or sorted(by_class)
    paths = [path for wnid in sorted(by_class) for path in by_class[wnid]]
    names = [wnid for wnid in sorted(by_class) for _ in by_class[wnid]]
    labels = labels_by_name(
        names, wnids, where, f"give {folder.name}/ only wnids of the label space (the {len(wnids)} of val/)"
    )
    return wnids, paths, labels.tolist()


@register_dataset(
    "imagenet",
    folder="imagenet",
    how=HOW["imagenet"],
    splits="test: val/ (50,000); train: train/ (1,281,167; the k-NN bank and replay)",
)
def imagenet(data_config=None, preprocess=None) -> TaskData:
    from forgetlab import wordnet

    root = dataset_folder("imagenet", data_config)
    wnids, paths, labels = read_imagenet_split(require(root / "val", "imagenet/val", HOW["imagenet"]))
    train = None
    if (root / "train").exists():
        _, train_paths, train_labels = read_imagenet_split(root / "train", wnids)
        train = FileDataset(train_paths, train_labels)
    task = _finish(
        "imagenet",
        data_config,
        preprocess,
        wnids,
        train,
        FileDataset(paths, labels),
        class_synsets=wnids,
        description="ImageNet-1k (ILSVRC2012) validation set",
    )
    # The class names last, so that every file problem is found before a missing WordNet is.
    return dataclasses.replace(task, classes=wordnet.wnid_names(wnids))


# ------------------------------------------------------------------------------------------- CIFAR-100
# The only globals a CIFAR pickle needs: numpy arrays and their dtypes (and, for a pickle written by
# Python 3 at protocol 2, the codec that rebuilds bytes). Anything else, e.g. os.system, is refused
# before it is called: loading a dataset never runs code from it.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


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
        raise DataError(
            f"{path} is not a CIFAR-100 pickle (it holds a {type(data).__name__}); re-extract cifar-100-python.tar.gz"
        )
    return data


@register_dataset(
    "cifar100",
    folder="cifar-100-python",
    how=HOW["cifar100"],
    splits="the train / test pickles (50,000 / 10,000)",
    domain=("object.n.01", "object"),
)
def cifar100(data_config=None, preprocess=None) -> TaskData:
    root = dataset_folder("cifar100", data_config)
    how = "re-extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    meta = _unpickle(require(root / "meta", "cifar-100-python/meta", HOW["cifar100"]))
    require_fields(meta, ["fine_label_names"], root / "meta", how)
    if not isinstance(meta["fine_label_names"], list):
        raise InvalidDataError(f"{root / 'meta'}: 'fine_label_names' is not a list of names; {how}")
    names = check_classes(meta["fine_label_names"], root / "meta", how)
    splits = {}
    for split in ("train", "test"):
        path = require(root / split, f"cifar-100-python/{split}", HOW["cifar100"])
        data = _unpickle(path)
        require_fields(data, ["data", "fine_labels"], path, how)
        try:
            images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except (ValueError, TypeError) as error:
            raise InvalidDataError(f"{path}: 'data' is not N x 3072 uint8 pixels ({error}); {how}") from error
        labels = check_labels(data["fine_labels"], len(names), path, how, what="fine label")
        if len(labels) != len(images):
            raise InvalidDataError(f"{path} has {len(images)} images but {len(labels)} labels; {how}")
        splits[split] = ArrayImageDataset(np.ascontiguousarray(images), labels)
    return _finish(
        "cifar100",
        data_config,
        preprocess,
        names,
        splits["train"],
        splits["test"],
        description="CIFAR-100 (32x32, 100 classes)",
    )


# ------------------------------------------------------------------------------------------- Stanford Cars
def _mat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as error:  # scipy raises several types for a bad file
        raise DataError(f"{path} is not a readable .mat file ({type(error).__name__}); re-download it") from error


CARS_HOW = {
    "cars_meta.mat": (
        "re-extract devkit/cars_meta.mat from the Stanford Cars "
        "devkit (car_devkit.tgz; mirrors such as Kaggle's have it)"
    ),
    "cars_train_annos.mat": (
        "re-extract devkit/cars_train_annos.mat from the Stanford Cars "
        "devkit (car_devkit.tgz; mirrors such as Kaggle's have it)"
    ),
    "cars_test_annos_withlabels.mat": (
        "use the devkit's cars_test_annos_withlabels.mat (the test annotations with labels, published "
        "beside car_devkit.tgz, whose cars_test_annos.mat has none; mirrors such as Kaggle's have it)"
    ),
}


@register_dataset(
    "stanford_cars",
    folder="stanford_cars",
    how=HOW["stanford_cars"],
    splits="devkit cars_train_annos.mat / cars_test_annos_withlabels.mat (8,144 / 8,041)",
    domain=("car.n.01", "car"),
)
def stanford_cars(data_config=None, preprocess=None) -> TaskData:
    root = dataset_folder("stanford_cars", data_config)
    how = HOW["stanford_cars"]
    meta_file = require(root / "devkit" / "cars_meta.mat", "devkit/cars_meta.mat", how)
    meta = _mat(meta_file)
    require_fields(meta, ["class_names"], meta_file, CARS_HOW["cars_meta.mat"])
    names = check_classes(np.atleast_1d(meta["class_names"]), meta_file, CARS_HOW["cars_meta.mat"])
    splits = {}
    for split, annotation_file in (
        ("train", root / "devkit" / "cars_train_annos.mat"),
        ("test", root / "cars_test_annos_withlabels.mat"),
    ):
        fix = CARS_HOW[annotation_file.name]
        annotations = _mat(require(annotation_file, annotation_file.name, how))
        require_fields(annotations, ["annotations"], annotation_file, fix)
        records = np.atleast_1d(annotations["annotations"])
        label_less = "fname" in (records.dtype.names or ()) and "class" not in (records.dtype.names or ())
        require_fields(
            records,
            ["fname", "class"],
            annotation_file,
            fix,
            hint="it is a label-less annotation file, such as the devkit's cars_test_annos.mat" if label_less else "",
        )
        labels = check_labels(records["class"], len(names), annotation_file, fix, first=1, what="class")
        folder = root / f"cars_{split}"
        splits[split] = FileDataset([folder / str(name) for name in records["fname"]], labels)
    return _finish(
        "stanford_cars",
        data_config,
        preprocess,
        names,
        splits["train"],
        splits["test"],
        description="Stanford Cars (196 models)",
    )


# ------------------------------------------------------------------------------------------- Flowers102
FLOWERS_SPLITS = {"train": ["trnid"], "trainval": ["trnid", "valid"]}


@register_dataset(
    "flowers102",
    variants={
        "train": "train on trnid only (1,020 images; paper 1's code, the default)",
        "trainval": "train on trnid + valid (2,040 images)",
    },
    folder="flowers-102",
    how=HOW["flowers102"],
    splits="setid.mat: trnid / tstid (1,020 / 6,149)",
    domain=("flower.n.01", "flower"),
)
def flowers102(data_config=None, preprocess=None, variant: str = "train") -> TaskData:
    root = dataset_folder("flowers102", data_config)
    how = HOW["flowers102"]
    fix = "download {} again from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
    label_file, id_file = (
        require(root / "imagelabels.mat", "imagelabels.mat", how),
        require(root / "setid.mat", "setid.mat", how),
    )
    label_mat = _mat(label_file)
    require_fields(label_mat, ["labels"], label_file, fix.format("imagelabels.mat"))
    labels = check_labels(np.atleast_1d(label_mat["labels"]), 102, label_file, fix.format("imagelabels.mat"), first=1)
    ids = _mat(id_file)
    require_fields(ids, sorted({*FLOWERS_SPLITS[variant], "tstid"}), id_file, fix.format("setid.mat"))

    def split(keys):
        # image_NNNNN.jpg is the NNNNNth image of imagelabels.mat: each id must be one of its images
        numbers = sorted(
            int(i) + 1
            for key in keys
            for i in check_labels(
                np.atleast_1d(ids[key]),
                len(labels),
                id_file,
                fix.format("setid.mat"),
                first=1,
                what=f"{key} image id",
                range_of="images in imagelabels.mat",
            )
        )
        return FileDataset(
            [root / "jpg" / f"image_{n:05d}.jpg" for n in numbers], [int(labels[n - 1]) for n in numbers]
        )

    return _finish(
        "flowers102",
        data_config,
        preprocess,
        [f"flower {i + 1}" for i in range(102)],
        split(FLOWERS_SPLITS[variant]),
        split(["tstid"]),
        description="Oxford Flowers102",
    )


# ------------------------------------------------------------------------------------------- FGVC-Aircraft
@register_dataset(
    "fgvc_aircraft",
    variants={
        "train": "train on images_variant_train.txt (3,334 images; paper 1's code, the default)",
        "trainval": "train on images_variant_trainval.txt (6,667 images)",
    },
    folder="fgvc-aircraft-2013b",
    how=HOW["fgvc_aircraft"],
    splits="images_variant_train.txt / _test.txt (3,334 / 3,333)",
    domain=("airplane.n.01", "plane"),
)
def fgvc_aircraft(data_config=None, preprocess=None, variant: str = "train") -> TaskData:
    data = dataset_folder("fgvc_aircraft", data_config) / "data"
    how = HOW["fgvc_aircraft"]
    fix = "re-extract fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"
    variants_file = require(data / "variants.txt", "data/variants.txt", how)
    variants = check_classes(
        [row[0] for row in read_rows(variants_file, ["variant"], fix)], variants_file, fix, unique=True
    )
    splits = {}
    for split, filename in (("train", f"images_variant_{variant}.txt"), ("test", "images_variant_test.txt")):
        rows = read_rows(require(data / filename, f"data/{filename}", how), ["image_id", "variant"], fix)
        labels = labels_by_name(
            [name for _, name in rows], variants, data / filename, fix, classes_file=variants_file, what="variant"
        )
        splits[split] = FileDataset([data / "images" / f"{image_id}.jpg" for image_id, _ in rows], labels)
    return _finish(
        "fgvc_aircraft",
        data_config,
        preprocess,
        variants,
        splits["train"],
        splits["test"],
        description="FGVC-Aircraft 2013b (100 variants)",
    )


# ------------------------------------------------------------------------------------------- CUB-200-2011
@register_dataset(
    "cub200",
    variants={
        "crop": "each image cropped to its bounding_boxes.txt box (paper 1's code, the default)",
        "nocrop": "whole images",
    },
    folder="CUB_200_2011",
    how=HOW["cub200"],
    splits="train_test_split.txt (5,994 / 5,794)",
    domain=("bird.n.01", "bird"),
)
def cub200(data_config=None, preprocess=None, variant: str = "crop") -> TaskData:
    root = dataset_folder("cub200", data_config)
    how = HOW["cub200"]
    fix = "re-extract CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/"

    def table(name: str, columns: list[str], number=str) -> dict[int, list]:
        """``id -> its other fields`` of one CUB file (``id field...`` per line), each read by ``number``."""
        path = require(root / name, name, how)
        by_id = {}
        for row in read_rows(path, columns, fix):
            try:
                key, values = int(row[0]), [number(value) for value in row[1:]]
            except ValueError as error:
                raise InvalidDataError(
                    f"{path}: '{' '.join(row)[:60]}' is not '{' '.join(columns)}' ({error}); {fix}"
                ) from error
            if key in by_id:
                raise InvalidDataError(f"{path} gives {columns[0]} {key} twice; {fix}")
            by_id[key] = values
        return by_id

    def for_every_image(name: str, by_id: dict, extra: str = "") -> None:
        missing = sorted(set(images) - set(by_id))
        if missing:
            raise InvalidDataError(
                f"{root / name} has no line for image {missing[0]} of images.txt ({len(missing)} missing); {fix}{extra}"
            )

    images = table("images.txt", ["image_id", "image_name"])
    class_names = table("classes.txt", ["class_id", "class_name"])
    classes = check_classes(
        [name.split(".", 1)[-1].replace("_", " ") for _, (name,) in sorted(class_names.items())],
        root / "classes.txt",
        fix,
    )
    is_train, labels = (
        table("train_test_split.txt", ["image_id", "is_training_image"]),
        table("image_class_labels.txt", ["image_id", "class_id"]),
    )
    for_every_image("train_test_split.txt", is_train)
    for_every_image("image_class_labels.txt", labels)
    order = sorted(images)
    flags = check_labels(
        [is_train[i][0] for i in order],
        2,
        root / "train_test_split.txt",
        fix,
        what="is_training_image flag",
        range_of="values: 0 test, 1 train",
    )
    targets = check_labels(
        [labels[i][0] for i in order], len(classes), root / "image_class_labels.txt", fix, first=1, what="class_id"
    )
    if variant == "crop":
        boxes = table("bounding_boxes.txt", ["image_id", "x", "y", "width", "height"], number=float)
        for_every_image("bounding_boxes.txt", boxes, " or use cub200:nocrop")
    splits = {flag: ([], [], []) for flag in (0, 1)}
    for image_id, flag, target in zip(order, flags, targets):
        paths, split_labels, split_boxes = splits[int(flag)]
        paths.append(root / "images" / images[image_id][0])
        split_labels.append(int(target))
        if variant == "crop":
            split_boxes.append(boxes[image_id])
    train, test = (
        FileDataset(p, l, boxes=b if variant == "crop" else None, box_file=root / "bounding_boxes.txt")
        for p, l, b in (splits[1], splits[0])
    )
    return _finish(
        "cub200", data_config, preprocess, classes, train, test, description="CUB-200-2011 (200 bird species)"
    )
