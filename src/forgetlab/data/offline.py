"""The offline world: real data that ships with Debian and scikit-learn, shaped like paper 1's setting.

============== ======================================= ============================ ===================
task           images                                  classes                      stands in for
============== ======================================= ============================ ===================
upstream       Fashion-MNIST garments + uppercase       10 garments + 26 letters,    ImageNet-1k
               letters rendered from 80 font files      each a WordNet 3.0 synset,   (pretraining task)
                                                        in two groups: clothing,
                                                        letters
fontfamily     lowercase letters, 8 font families       which family drew it (8)     Stanford Cars: fine-
                                                                                     grained, inside the
                                                                                     'letters' group
digits         scikit-learn's handwritten 8x8 digits    0-9 (10)                     a domain outside
                                                                                     every upstream group
fontstyle      lowercase letters, 12 other families     regular/bold/italic/bold     FGVC-Aircraft: a 2nd
                                                        italic (4)                   fine-grained task
============== ======================================= ============================ ===================

Every image is 28x28 grayscale. Downstream glyphs are lowercase and rendered with their own seeds, and
any downstream image byte-identical to an upstream test image is dropped, so no downstream image is in
the upstream test set. The world is fixed (its own seeds, not the run's) and cached as ``.npz`` files
under ``$FORGETLAB_HOME/offline-v1-<key>`` on first use (the key: its source files, see
:func:`world_sources`); building it takes a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path

import numpy as np

from forgetlab import caches, paths
from forgetlab.data.base import ArrayDataset, TaskData
from forgetlab.data.fonts import CATALOGUE, STYLES, font_files, render_glyph
from forgetlab.data.idx import read_idx
from forgetlab.data.registry import register_dataset
from forgetlab.data.validate import check_labels, require_fields
from forgetlab.errors import DataError
from forgetlab.results import build_lock

WORLD_VERSION = caches.FORMATS["offline-world"]
WORLD_DATASETS = ("offline_upstream", "fontfamily", "digits", "fontstyle")  # the registered names built from the world
IMAGE_SIZE = 28

FASHION_CLASSES = [
    ("T-shirt/top", "jersey.n.03"),
    ("Trouser", "trouser.n.01"),
    ("Pullover", "pullover.n.01"),
    ("Dress", "dress.n.01"),
    ("Coat", "coat.n.01"),
    ("Sandal", "sandal.n.01"),
    ("Shirt", "shirt.n.01"),
    ("Sneaker", "gym_shoe.n.01"),
    ("Bag", "bag.n.04"),
    ("Ankle boot", "boot.n.01"),
]
# 'the Nth letter of the Roman alphabet' in WordNet 3.0.
LETTER_SYNSETS = [
    "a.n.06",
    "b.n.06",
    "c.n.11",
    "d.n.03",
    "e.n.05",
    "f.n.04",
    "g.n.09",
    "h.n.04",
    "i.n.03",
    "j.n.02",
    "k.n.06",
    "l.n.04",
    "m.n.06",
    "n.n.05",
    "o.n.02",
    "p.n.02",
    "q.n.01",
    "r.n.03",
    "s.n.05",
    "t.n.04",
    "u.n.03",
    "v.n.04",
    "w.n.04",
    "x.n.02",
    "y.n.02",
    "z.n.02",
]
FAMILY_TASK_FAMILIES = [
    "DejaVu Sans",
    "DejaVu Serif",
    "DejaVu Sans Mono",
    "Liberation Serif",
    "C059",
    "P052",
    "URW Bookman",
    "URW Gothic",
]
STYLE_TASK_FAMILIES = [family for family in CATALOGUE if family not in FAMILY_TASK_FAMILIES]

# Images per class (Fashion-MNIST) and renders per (glyph, font file) for each split.
FASHION_PER_CLASS = {"train": 800, "test": 200}
UPSTREAM_LETTER_RENDERS = {"train": 4, "test": 1}
FAMILY_RENDERS = {"train": 3, "test": 1}
STYLE_RENDERS = {"train": 2, "test": 1}
DIGITS_TEST_FRACTION = 0.3


FASHION_MNIST_SETTING = "FORGETLAB_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def fashion_mnist_dir() -> Path:
    """The folder holding Fashion-MNIST's four ``.gz`` files (:data:`FASHION_MNIST_FILES`):
    ``$FORGETLAB_FASHION_MNIST_DIR``, else Debian's ``dataset-fashion-mnist`` location. torchvision's
    ``FashionMNIST(root, download=True)`` leaves the same files in ``root/FashionMNIST/raw``."""
    return Path(os.environ.get(FASHION_MNIST_SETTING, FASHION_MNIST_DEBIAN_DIR)).expanduser()


def world_sources() -> list[Path]:
    """The files the world is built from: Fashion-MNIST's, the catalogue's fonts and scikit-learn's
    digits (found without importing scikit-learn)."""
    import importlib.util

    folder = fashion_mnist_dir()
    fashion = [
        folder / f"{prefix}-{kind}-idx{rank}-ubyte.gz"
        for prefix in ("train", "t10k")
        for kind, rank in (("images", 3), ("labels", 1))
    ]
    fonts = [Path(path) for _, files in CATALOGUE.values() for path in files]
    spec = importlib.util.find_spec("sklearn")
    digits = [Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"] if spec and spec.origin else []
    return fashion + fonts + digits


def world_dir() -> Path:
    """``$FORGETLAB_HOME/offline-v<format>-<key>``: another source file (an updated font package, another
    Fashion-MNIST folder) is another world (:func:`forgetlab.caches.offline_world_key`)."""
    return paths.home() / f"offline-v{WORLD_VERSION}-{caches.offline_world_key(world_sources())}"


# --------------------------------------------------------------------------------------------- builders
def _seed(*parts) -> np.random.Generator:
    return np.random.default_rng([WORLD_VERSION, *parts])


def _render_split(glyphs: str, files, renders: int, label_of, split_id: int, task_id: int):
    images, labels = [], []
    for round_index in range(renders):
        for file_index, (family, style, path) in enumerate(files):
            for glyph_index, glyph in enumerate(glyphs):
                rng = _seed(task_id, split_id, round_index, file_index, glyph_index)
                images.append(render_glyph(glyph, path, rng, IMAGE_SIZE))
                labels.append(label_of(family, style, glyph_index))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    image_file = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not image_file.exists():
        raise DataError(
            f"Fashion-MNIST not found in {folder}; install it with: sudo apt-get install dataset-fashion-mnist "
            f"(or run 'make demo'); without root, set {FASHION_MNIST_SETTING} ('forgetlab setup' says how)"
        )
    images = read_idx(image_file)
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {folder} are malformed: images {images.shape}, labels {labels.shape}")
    rng = _seed(0, 0 if split == "train" else 1)
    keep = np.concatenate(
        [np.sort(rng.permutation(np.flatnonzero(labels == c))[: FASHION_PER_CLASS[split]]) for c in range(10)]
    )
    return images[keep], labels[keep]


def _build_upstream() -> dict[str, np.ndarray]:
    files = font_files(CATALOGUE)
    arrays = {}
    for split_id, split in enumerate(("train", "test")):
        garments, garment_labels = _fashion(split)
        letters, letter_labels = _render_split(
            string.ascii_uppercase, files, UPSTREAM_LETTER_RENDERS[split], lambda f, s, g: 10 + g, split_id, 1
        )
        arrays[f"x_{split}"] = np.concatenate([garments, letters])
        arrays[f"y_{split}"] = np.concatenate([garment_labels, letter_labels])
    return arrays


def _build_fonts(task_id: int, families, renders, label_of) -> dict[str, np.ndarray]:
    files = font_files(families)
    arrays = {}
    for split_id, split in enumerate(("train", "test")):
        x, y = _render_split(string.ascii_lowercase, files, renders[split], label_of, split_id, task_id)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return arrays


def _build_digits() -> dict[str, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 values 0..16 -> a 20x20 glyph centred in 28x28, as MNIST centres its digits.
    images = []
    for image in digits.images:
        small = Image.fromarray(np.uint8(np.round(image * (255 / 16))))
        glyph = np.asarray(small.resize((20, 20), resample=Image.BICUBIC), dtype=np.uint8)
        images.append(np.pad(glyph, 4))
    images, labels = np.stack(images), digits.target.astype(np.int64)
    rng = _seed(3, 0)
    test = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[: round(DIGITS_TEST_FRACTION * (labels == c).sum())]
            for c in range(10)
        ]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return {
        "x_train": images[~is_test],
        "y_train": labels[~is_test],
        "x_test": images[is_test],
        "y_test": labels[is_test],
    }


_BUILDERS = {
    "upstream": _build_upstream,
    "fontfamily": lambda: _build_fonts(
        2, FAMILY_TASK_FAMILIES, FAMILY_RENDERS, lambda f, s, g: FAMILY_TASK_FAMILIES.index(f)
    ),
    "fontstyle": lambda: _build_fonts(4, STYLE_TASK_FAMILIES, STYLE_RENDERS, lambda f, s, g: STYLES.index(s)),
    "digits": _build_digits,
}


def _hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


def _drop_upstream_test_duplicates(arrays: dict[str, np.ndarray], upstream_test: np.ndarray) -> dict[str, np.ndarray]:
    seen = set(_hashes(upstream_test))
    for split in ("train", "test"):
        keep = np.asarray([h not in seen for h in _hashes(arrays[f"x_{split}"])], dtype=bool)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = arrays[f"x_{split}"][keep], arrays[f"y_{split}"][keep]
    return arrays


def load_arrays(name: str) -> dict[str, np.ndarray]:
    """The arrays of one offline dataset, built and cached on first use (atomically)."""
    path = world_dir() / f"{name}.npz"
    if not path.exists():
        # one builder per dataset: another process (or thread) asking meanwhile waits, then reads its file
        with build_lock(
            path.with_name(f".{name}.lock"), f"building the offline world's {name} images in {path.parent}"
        ):
            if not path.exists():
                _build_arrays(name, path)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _build_arrays(name: str, path: Path) -> None:
    arrays = _BUILDERS[name]()
    if name != "upstream":
        arrays = _drop_upstream_test_duplicates(arrays, load_arrays("upstream")["x_test"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{name}.{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def _task(name: str, data_config, classes: list[str], **metadata) -> TaskData:
    arrays = load_arrays(name)
    # The cached file is outside forgetlab's control once written (copied, edited, from another version).
    cached, fix = world_dir() / f"{name}.npz", "delete that file; forgetlab rebuilds it on first use"
    require_fields(arrays, ["x_train", "y_train", "x_test", "y_test"], cached, fix)
    train = ArrayDataset(
        arrays["x_train"], check_labels(arrays["y_train"], len(classes), cached, fix, what="y_train label")
    )
    test = ArrayDataset(
        arrays["x_test"], check_labels(arrays["y_test"], len(classes), cached, fix, what="y_test label")
    )
    if data_config is not None and data_config.max_train is not None:
        train = train.subset(data_config.max_train, seed=0)
    if data_config is not None and data_config.max_test is not None:
        test = test.subset(data_config.max_test, seed=0)
    return TaskData(name=name, classes=classes, train=train, test=test, **metadata)


# --------------------------------------------------------------------------------------------- registry
WORLD = "offline world"  # where these datasets come from: built on first use, cached under FORGETLAB_HOME
UPSTREAM_SPLITS = "train / test: Fashion-MNIST's train / t10k garments, and uppercase letters rendered apart for each"
FONT_SPLITS = "train / test: lowercase letters rendered apart for each, less any image of the upstream test set"
DIGITS_SPLITS = "train / test: a seeded 70 / 30 split of each digit, less any image of the upstream test set"


@register_dataset("offline_upstream", builtin=WORLD, channels=1, splits=UPSTREAM_SPLITS)
def offline_upstream(data_config=None, preprocess=None) -> TaskData:  # offline images bring their own preprocessing
    return _task(
        "upstream",
        data_config,
        classes=[name for name, _ in FASHION_CLASSES] + list(string.ascii_uppercase),
        class_synsets=[synset for _, synset in FASHION_CLASSES] + LETTER_SYNSETS,
        class_groups=["clothing"] * len(FASHION_CLASSES) + ["letters"] * 26,
        description="Fashion-MNIST garments and uppercase letters from 80 font files",
        stands_in_for="ImageNet-1k (the pretraining task)",
    )


@register_dataset("fontfamily", builtin=WORLD, channels=1, splits=FONT_SPLITS, domain=("letter.n.02", "letter"))
def fontfamily(data_config=None, preprocess=None) -> TaskData:  # offline images bring their own preprocessing
    return _task(
        "fontfamily",
        data_config,
        classes=list(FAMILY_TASK_FAMILIES),
        description="which of 8 font families drew a lowercase letter",
        stands_in_for="Stanford Cars (fine-grained, inside the upstream 'letters' group)",
    )


@register_dataset("digits", builtin=WORLD, channels=1, splits=DIGITS_SPLITS, domain=("digit.n.01", "digit"))
def digits(data_config=None, preprocess=None) -> TaskData:  # offline images bring their own preprocessing
    return _task(
        "digits",
        data_config,
        classes=[str(d) for d in range(10)],
        description="scikit-learn's handwritten digits (8x8, upsampled)",
        stands_in_for="a domain outside every upstream group (Flowers102's role)",
    )


@register_dataset("fontstyle", builtin=WORLD, channels=1, splits=FONT_SPLITS, domain=("font.n.01", "font"))
def fontstyle(data_config=None, preprocess=None) -> TaskData:  # offline images bring their own preprocessing
    return _task(
        "fontstyle",
        data_config,
        classes=list(STYLES),
        description="regular, bold, italic or bold italic, over 12 other font families",
        stands_in_for="FGVC-Aircraft (a second fine-grained task near the 'letters' group)",
    )
