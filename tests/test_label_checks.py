"""Labels that cannot be right. Every loader checks, when the task is built, that
each label lies in its class range and that each file has the fields it needs; a wrong file is one
DataError line naming it and the fix, from ``forgetlab run`` (exit 2, nothing written) and from
``forgetlab data check`` alike. The files are tiny copies of the real layouts (tests/test_real_data.py)."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import yaml
from scipy.io import savemat

from forgetlab.config import DataConfig
from forgetlab.data import build_task
from forgetlab.data.validate import InvalidDataError, check_labels, require_fields
from forgetlab.errors import DataError
from tests.test_real_data import WNIDS, _jpg, root  # noqa: F401  (root: the module-scoped fixture of every layout)

CARS_FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def _cars(path, classes, fields=CARS_FIELDS):
    """A devkit annotation file: one record per class value, with ``fields`` (the devkit's names)."""
    values = {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 10, "bbox_y2": 12}
    records = [
        tuple(f"{i + 1:05d}.jpg" if f == "fname" else label if f == "class" else values[f] for f in fields)
        for i, label in enumerate(classes)
    ]
    dtype = [(f, object if f == "fname" else np.int16) for f in fields]
    savemat(path, {"annotations": np.array(records, dtype=dtype)})


def _cifar(path, labels, key="fine_labels"):
    data = {"data": np.zeros((len(labels), 3072), dtype=np.uint8), key: labels}
    path.write_bytes(pickle.dumps(data))


def _flat_imagenet(data, rows, images=3):
    """val/ flat, with LOC_val_solution.csv beside it (``rows``: its lines after the header)."""
    val = data / "imagenet" / "val"
    shutil.rmtree(val)
    shutil.rmtree(data / "imagenet" / "train")
    for i in range(images):
        _jpg(val / f"ILSVRC2012_val_0000000{i}.JPEG", i)
    (data / "imagenet" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")


def _imagenet_rows(header="ImageId,PredictionString"):
    return [header] + [f"ILSVRC2012_val_0000000{i},{wnid} 1 2 3 4" for i, wnid in enumerate(WNIDS)]


# (task, broken file under the root, how to break it, what the line must say)
CASES = {
    # Stanford Cars (2 classes in cars_meta.mat; labels 1-based)
    "cars test: the label-less cars_test_annos.mat": (
        "stanford_cars",
        "stanford_cars/cars_test_annos_withlabels.mat",
        lambda f: _cars(f, [2, 1], ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"]),
        [
            "lacks the field 'class'",
            "label-less",
            "such as the devkit's cars_test_annos.mat",
            "use the devkit's cars_test_annos_withlabels.mat",
        ],
    ),
    "cars test: label above range": (
        "stanford_cars",
        "stanford_cars/cars_test_annos_withlabels.mat",
        lambda f: _cars(f, [2, 3]),
        ["class 3 at entry 2 lies outside 1..2 (2 classes)", "cars_test_annos_withlabels.mat (the test"],
    ),
    "cars test: label below range": (
        "stanford_cars",
        "stanford_cars/cars_test_annos_withlabels.mat",
        lambda f: _cars(f, [0, 1]),
        ["class 0 at entry 1 lies outside 1..2"],
    ),
    "cars train: label above range": (
        "stanford_cars",
        "stanford_cars/devkit/cars_train_annos.mat",
        lambda f: _cars(f, [1, 197, 2]),
        ["class 197 at entry 2 lies outside 1..2", "car_devkit.tgz"],
    ),
    "cars train: label below range": (
        "stanford_cars",
        "stanford_cars/devkit/cars_train_annos.mat",
        lambda f: _cars(f, [1, 2, 0]),
        ["class 0 at entry 3 lies outside 1..2"],
    ),
    "cars train: field missing": (
        "stanford_cars",
        "stanford_cars/devkit/cars_train_annos.mat",
        lambda f: _cars(f, [1, 2, 2], ["class", "bbox_x1"]),
        ["lacks the field 'fname'"],
    ),
    "cars meta: field missing": (
        "stanford_cars",
        "stanford_cars/devkit/cars_meta.mat",
        lambda f: savemat(f, {"names": np.array(["a"], dtype=object)}),
        ["lacks the field 'class_names' (it has: names)"],
    ),
    # Flowers102 (102 classes, 1-based; 7 images in imagelabels.mat)
    "flowers: labels field missing": (
        "flowers102",
        "flowers-102/imagelabels.mat",
        lambda f: savemat(f, {"label": np.ones(7)}),
        ["lacks the field 'labels'", "download imagelabels.mat again"],
    ),
    "flowers: label above range": (
        "flowers102",
        "flowers-102/imagelabels.mat",
        lambda f: savemat(f, {"labels": np.array([1, 2, 1, 2, 103, 1, 102])}),
        ["label 103 at entry 5 lies outside 1..102 (102 classes)"],
    ),
    "flowers: label below range": (
        "flowers102",
        "flowers-102/imagelabels.mat",
        lambda f: savemat(f, {"labels": np.array([0, 2, 1, 2, 5, 1, 102])}),
        ["label 0 at entry 1 lies outside 1..102"],
    ),
    "flowers train: image id above range": (
        "flowers102",
        "flowers-102/setid.mat",
        lambda f: savemat(f, {"trnid": np.array([1, 8]), "valid": np.array([3]), "tstid": np.array([4])}),
        ["trnid image id 8 at entry 2 lies outside 1..7 (7 images in imagelabels.mat)", "download setid.mat again"],
    ),
    "flowers test: image id below range": (
        "flowers102",
        "flowers-102/setid.mat",
        lambda f: savemat(f, {"trnid": np.array([1]), "valid": np.array([3]), "tstid": np.array([0, 4])}),
        ["tstid image id 0 at entry 1 lies outside 1..7"],
    ),
    "flowers test: tstid field missing": (
        "flowers102",
        "flowers-102/setid.mat",
        lambda f: savemat(f, {"trnid": np.array([1])}),
        ["lacks the field 'tstid' (it has: trnid)"],
    ),
    # FGVC-Aircraft (labels by variant name)
    "aircraft train: field missing": (
        "fgvc_aircraft",
        "fgvc-aircraft-2013b/data/images_variant_train.txt",
        lambda f: f.write_text("1000001 707-320\n1000003\n"),
        ["line 2 ('1000003') lacks the field(s) variant (each line is: image_id variant)"],
    ),
    "aircraft test: variant outside variants.txt": (
        "fgvc_aircraft",
        "fgvc-aircraft-2013b/data/images_variant_test.txt",
        lambda f: f.write_text("1000004 A380-900\n"),
        ["variant 'A380-900' is not in variants.txt", "fgvc-aircraft-2013b.tar.gz"],
    ),
    "aircraft: a variant listed twice": (
        "fgvc_aircraft",
        "fgvc-aircraft-2013b/data/variants.txt",
        lambda f: f.write_text("707-320\nA380\n707-320\n"),
        ["lists the class '707-320' twice"],
    ),
    # CUB-200-2011 (2 classes, 1-based; images 1 and 3 train, 2 test)
    "cub train: class above range": (
        "cub200",
        "CUB_200_2011/image_class_labels.txt",
        lambda f: f.write_text("1 3\n2 2\n3 2\n"),
        ["class_id 3 at entry 1 lies outside 1..2 (2 classes)", "CUB_200_2011.tgz"],
    ),
    "cub test: class below range": (
        "cub200",
        "CUB_200_2011/image_class_labels.txt",
        lambda f: f.write_text("1 1\n2 0\n3 2\n"),
        ["class_id 0 at entry 2 lies outside 1..2"],
    ),
    "cub: class field missing": (
        "cub200",
        "CUB_200_2011/image_class_labels.txt",
        lambda f: f.write_text("1 1\n2\n3 2\n"),
        ["line 2 ('2') lacks the field(s) class_id"],
    ),
    "cub: an image without a class": (
        "cub200",
        "CUB_200_2011/image_class_labels.txt",
        lambda f: f.write_text("1 1\n2 2\n"),
        ["has no line for image 3 of images.txt"],
    ),
    "cub: split flag outside 0/1": (
        "cub200",
        "CUB_200_2011/train_test_split.txt",
        lambda f: f.write_text("1 1\n2 2\n3 1\n"),
        ["is_training_image flag 2 at entry 2 lies outside 0..1"],
    ),
    "cub: image name missing": (
        "cub200",
        "CUB_200_2011/images.txt",
        lambda f: f.write_text("1 001.Black_footed_Albatross/a.jpg\n2\n"),
        ["line 2 ('2') lacks the field(s) image_name"],
    ),
    "cub: box field missing": (
        "cub200",
        "CUB_200_2011/bounding_boxes.txt",
        lambda f: f.write_text("1 2.0 3.0 10.0 8.0\n2 0.0 0.0 24.0\n3 1 1 5 5\n"),
        ["line 2 ('2 0.0 0.0 24.0') lacks the field(s) height"],
    ),
    # CIFAR-100 (3 fine label names in meta; labels 0-based)
    "cifar train: label above range": (
        "cifar100",
        "cifar-100-python/train",
        lambda f: _cifar(f, [0, 1, 3, 0]),
        ["fine label 3 at entry 3 lies outside 0..2 (3 classes)", "cifar-100-python.tar.gz"],
    ),
    "cifar test: label below range": (
        "cifar100",
        "cifar-100-python/test",
        lambda f: _cifar(f, [0, -1]),
        ["fine label -1 at entry 2 lies outside 0..2"],
    ),
    "cifar test: field missing": (
        "cifar100",
        "cifar-100-python/test",
        lambda f: _cifar(f, [0, 1], key="coarse_labels"),
        ["lacks the field 'fine_labels' (it has: data, coarse_labels)"],
    ),
    "cifar meta: field missing": (
        "cifar100",
        "cifar-100-python/meta",
        lambda f: f.write_bytes(pickle.dumps({"coarse_label_names": ["a"]})),
        ["lacks the field 'fine_label_names'"],
    ),
    # ImageNet: wnid folders, and flat val with Kaggle's LOC_val_solution.csv
    "imagenet train: a class outside val's": (
        "imagenet",
        "imagenet/train",
        lambda f: _jpg(f / "n09999999" / "x.JPEG", 0),
        ["class 'n09999999' is not among the 3 classes"],
    ),
    "imagenet val: a class folder that is not a wnid": (
        "imagenet",
        "imagenet/val",
        lambda f: _jpg(f / "cars" / "x.JPEG", 0),
        ["folders that are not wnids (cars)", "n01440764"],
    ),
    "imagenet flat: field missing": (
        "imagenet",
        "imagenet/LOC_val_solution.csv",
        lambda f: _flat_imagenet(f.parent.parent, _imagenet_rows("ImageId,Prediction")),
        ["lacks the field 'PredictionString' (it has: ImageId, Prediction)", "Kaggle's LOC_val_solution.csv"],
    ),
    "imagenet flat: a row without a wnid": (
        "imagenet",
        "imagenet/LOC_val_solution.csv",
        lambda f: _flat_imagenet(f.parent.parent, [*_imagenet_rows()[:3], "ILSVRC2012_val_00000002,"]),
        ["line 4: image ILSVRC2012_val_00000002 has no wnid"],
    ),
    "imagenet flat: an image without a row": (
        "imagenet",
        "imagenet/LOC_val_solution.csv",
        lambda f: _flat_imagenet(f.parent.parent, _imagenet_rows()[:3]),
        ["has no row for 1 of the 3 images", "(e.g. ILSVRC2012_val_00000002)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_loader_refuses_a_wrong_file_in_one_line_naming_it(root, tmp_path, monkeypatch, case):  # noqa: F811
    from forgetlab import data_check as check

    task, relative, breaks, expected = CASES[case]
    data = tmp_path / "data"
    shutil.copytree(root, data)
    build_task(task, DataConfig(root=str(data)))  # the intact copy loads
    breaks(data / relative)
    with pytest.raises(InvalidDataError) as caught:
        build_task(task, DataConfig(root=str(data)))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(data / relative)), message
    for part in expected:
        assert part in message, message
    # 'forgetlab data check' loads the dataset the same way: the same line, marked INVALID.
    monkeypatch.setattr(check, "dataset_names", lambda: [task])
    lines, missing = check.check_datasets(str(data))
    flat = not (
        data / "imagenet" / "train"
    ).exists()  # a flat val/ copy has no train/: listed too (the k-NN bank reads it)
    assert missing == [task, *(["imagenet train/"] if task == "imagenet" and flat else [])]
    assert lines[1] == f"  {task:15s} INVALID  looked in {data / check.dataset_info(task).folder}: {message}"


@pytest.mark.parametrize(
    "labels,array,expected",
    [
        ("y_train", [0, 1, 10, 2], "y_train label 10 at entry 3 lies outside 0..9 (10 classes)"),
        ("y_test", [0, -1], "y_test label -1 at entry 2 lies outside 0..9 (10 classes)"),
        ("y_test", None, "lacks the field 'y_test' (it has: x_train, y_train, x_test)"),
    ],
)
def test_the_offline_worlds_cached_arrays_are_checked_too(tmp_path, monkeypatch, labels, array, expected):
    from forgetlab.data.offline import world_dir

    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path))  # not the session's world
    arrays = {
        "x_train": np.zeros((4, 28, 28), np.uint8),
        "y_train": np.arange(4),
        "x_test": np.zeros((2, 28, 28), np.uint8),
        "y_test": np.arange(2),
    }
    arrays[labels] = np.asarray(array)
    if array is None:
        del arrays[labels]
    world_dir().mkdir(parents=True)
    np.savez(world_dir() / "digits.npz", **arrays)
    with pytest.raises(DataError) as caught:
        build_task("digits")
    assert str(caught.value) == (
        f"{world_dir() / 'digits.npz'}{': ' if array is not None else ' '}{expected}; "
        f"delete that file; forgetlab rebuilds it on first use"
    )


def test_check_labels_returns_zero_based_indices_and_refuses_what_is_not_a_label():
    assert check_labels(np.array([1, 196, 5], np.uint8), 196, "f.mat", "fix", first=1).tolist() == [0, 195, 4]
    assert check_labels([], 3, "f", "fix").tolist() == []
    with pytest.raises(DataError, match=r"^f: label 1.5 at entry 2 is not a whole number \(and 1 more of 3\); fix$"):
        check_labels([0, 1.5, float("nan")], 3, "f", "fix")
    with pytest.raises(DataError, match=r"^f: its labels are not numbers"):
        check_labels(["a", "b"], 3, "f", "fix")
    with pytest.raises(DataError, match=r"^f has labels but there are no classes to give them; fix$"):
        check_labels([0], 0, "f", "fix")
    require_fields({"__header__": b"", "a": 1}, ["a"], "f", "fix")
    with pytest.raises(DataError, match=r"^f lacks the fields 'b', 'c' \(it has: a\); fix$"):
        require_fields({"__header__": b"", "a": 1}, ["a", "b", "c"], "f", "fix")


def test_a_wrong_file_stops_run_and_api_before_anything_is_written(root, tmp_path, capsys, monkeypatch):  # noqa: F811
    import forgetlab
    from forgetlab.cli import main
    from forgetlab import data_check as check

    real = [name for name in check.dataset_names() if check.dataset_info(name).folder is not None]
    monkeypatch.setattr(
        check, "dataset_names", lambda: real
    )  # the real datasets (a folder each): no offline world to build

    data = tmp_path / "data"
    shutil.copytree(root, data)
    broken = data / "stanford_cars" / "cars_test_annos_withlabels.mat"
    _cars(broken, [2, 1], ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"])  # the devkit's label-less file
    out = tmp_path / "runs"
    overrides = [
        f"data.root={data}",
        "data.upstream=cifar100",
        "data.tasks=[stanford_cars]",
        "backbone.name=resnet18",
        "backbone.random_init=true",
        "backbone.num_classes=3",
        "backbone.image_size=32",
        f"out_dir={out}",
        "name=cars",
    ]
    assert main(["run", *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err + captured.out
    diagnosis = captured.err.removeprefix("forgetlab: error: ").strip()
    assert (
        diagnosis.startswith(f"{broken} lacks the field 'class'")
        and "use the devkit's cars_test_annos_withlabels.mat" in diagnosis
    )
    assert not out.exists() or not any(out.rglob("*"))  # no run folder, no lock, no config
    with pytest.raises(DataError) as caught:
        forgetlab.run(
            log=None,
            **{key.replace(".", "__"): yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)},
        )
    assert str(caught.value) == diagnosis and (not out.exists() or not any(out.rglob("*")))
    # 'forgetlab data check' prints the same diagnosis (exit 2: a dataset is invalid), without a traceback.
    assert main(["data", "check", "--root", str(data)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "cub200          ok" in captured.out
    assert f"  stanford_cars   INVALID  looked in {data / 'stanford_cars'}: {diagnosis}" in captured.out.splitlines()


@pytest.mark.parametrize(
    "task,relative",
    [
        ("cub200", "CUB_200_2011/images/002.Laysan_Albatross/c.jpg"),
        ("fgvc_aircraft", "fgvc-aircraft-2013b/data/images/1000004.jpg"),
    ],
)
def test_an_image_its_annotations_list_but_the_folder_lacks_is_refused_when_the_task_loads(
    root, tmp_path, monkeypatch, task, relative
):  # noqa: F811
    """Was a decoding error after the run had committed its pretrained row; now the task does not load
    and 'forgetlab data check' marks the dataset INVALID with the same line."""
    from forgetlab import data_check as check

    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / relative).unlink()
    with pytest.raises(InvalidDataError) as caught:
        build_task(task, DataConfig(root=str(data)))
    message = str(caught.value)
    assert message.startswith(f"{data / relative} is missing (1 of ") and "re-extract the dataset" in message
    monkeypatch.setattr(check, "dataset_names", lambda: [task])
    lines, missing = check.check_datasets(str(data))
    assert missing == [task] and "INVALID" in lines[1] and lines[1].endswith(message)


def test_a_box_no_image_can_hold_marks_cub_invalid_with_the_runs_line(root, tmp_path, monkeypatch):  # noqa: F811
    """A negative-width box was labelled MISSING (an absent file) by 'forgetlab data check'."""
    from forgetlab import data_check as check

    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "CUB_200_2011" / "bounding_boxes.txt").write_text(
        "1 5.0 5.0 -3.0 10.0\n2 0.0 0.0 24.0 20.0\n3 1.0 1.0 5.0 5.0\n"
    )
    with pytest.raises(InvalidDataError) as caught:
        build_task("cub200", DataConfig(root=str(data)))
    assert "w=-3, h=10) in " in str(caught.value) and "bounding_boxes.txt has no pixel inside any image" in str(
        caught.value
    )
    monkeypatch.setattr(check, "dataset_names", lambda: ["cub200"])
    lines, missing = check.check_datasets(str(data))
    assert missing == ["cub200"] and "INVALID" in lines[1] and lines[1].endswith(str(caught.value))
