"""The offline world: real files parsed, sizes, disjointness from the upstream test set, WordNet labels."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from forgetlab import wordnet
from forgetlab.data import build_task, dataset_names
from forgetlab.data.idx import read_idx
from forgetlab.data.offline import FAMILY_TASK_FAMILIES, STYLE_TASK_FAMILIES, load_arrays
from forgetlab.errors import DataError


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    truncated = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 4
    (tmp_path / "short.gz").write_bytes(gzip.compress(truncated))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_world_sizes_and_labels():
    offline = ["digits", "fontfamily", "fontstyle", "offline_upstream"]
    real = ["cifar100", "cub200", "fgvc_aircraft", "flowers102", "imagenet", "stanford_cars"]
    assert dataset_names() == sorted(offline + real)
    expected = {  # name: (classes, train, test)
        "offline_upstream": (36, 10 * 800 + 26 * 80 * 4, 10 * 200 + 26 * 80),
        "fontfamily": (8, 26 * 8 * 4 * 3, 26 * 8 * 4),
        "fontstyle": (4, 26 * 12 * 4 * 2, 26 * 12 * 4),
        "digits": (10, 1797 - 539, 539),
    }
    for name, (classes, train, test) in expected.items():
        task = build_task(name, None)
        assert (task.num_classes, len(task.train), len(task.test)) == (classes, train, test), name
        for split in (task.train, task.test):
            counts = np.bincount(split.labels.numpy(), minlength=classes)
            assert counts.min() > 0 and len(counts) == classes
        image, label = task.train[0]
        assert image.shape == (1, 28, 28) and -1 <= image.min() and image.max() <= 1
    assert not set(FAMILY_TASK_FAMILIES) & set(STYLE_TASK_FAMILIES)


def test_no_downstream_image_is_in_the_upstream_test_set():
    upstream = {hashlib.sha1(x.tobytes()).digest() for x in load_arrays("upstream")["x_test"]}
    for name in ("fontfamily", "digits", "fontstyle"):
        arrays = load_arrays(name)
        for split in ("x_train", "x_test"):
            assert not upstream & {hashlib.sha1(x.tobytes()).digest() for x in arrays[split]}, (name, split)


def test_world_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path))
    rebuilt = load_arrays("fontstyle")
    monkeypatch.undo()
    cached = load_arrays("fontstyle")
    for key in cached:
        np.testing.assert_array_equal(rebuilt[key], cached[key])


def test_upstream_classes_are_wordnet_synsets_in_two_groups():
    task = build_task("offline_upstream", None)
    assert set(task.class_groups) == {"clothing", "letters"}
    clothing, letter = wordnet.synset("clothing.n.01"), wordnet.synset("letter.n.02")
    for name, synset_name, group in zip(task.classes, task.class_synsets, task.class_groups):
        synset = wordnet.synset(synset_name)
        ancestors = {s for path in synset.hypernym_paths() for s in path}
        assert (clothing if group == "clothing" else letter) in ancestors or group == "clothing", name
        if group == "letters":
            assert "letter of the Roman alphabet" in synset.definition() and synset_name[0] == name.lower()
    # Bags and boots are not garments in WordNet, but they are worn or carried: closer to clothing than to letters.
    for synset_name in task.class_synsets[:10]:
        assert wordnet.wup_similarity(synset_name, clothing) > wordnet.wup_similarity(synset_name, letter)
    for task_name in ("fontfamily", "digits", "fontstyle"):
        assert wordnet.synset(build_task(task_name, None).domain_synset)
