"""What a run reads from disk, and ``forgetlab data check`` before it: files that are not images
(operating-system metadata) are skipped by every listing, the check counts what a run loads, every
missing or invalid input is listed in one pass (exit 2), ``forgetlab run`` refuses with the same list
before writing anything, and each refusal's suggested fix works. Tiny copies of the real layouts
(tests/test_real_data.py)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from forgetlab.config import DataConfig
from forgetlab.data import build_task
from forgetlab.errors import ConfigError
from tests.test_real_data import WNIDS, _jpg, root  # noqa: F401 - the fixture

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)  # an AppleDouble header: no image
SMOKE = [
    "backbone.name=resnet18",
    "backbone.random_init=true",
    "backbone.image_size=32",
    "data.workers=0",
    "train.max_steps=1",
    "train.batch_size=2",
    "eval.batch_size=8",
    "data.pipeline=pil",
    "method.name=linear",
]


def _with_os_metadata(data: Path) -> None:
    """What a Mac, a zip made on one, and Windows Explorer leave beside the images."""
    val, train = data / "imagenet" / "val", data / "imagenet" / "train"
    (val / WNIDS[0] / f"._ILSVRC2012_val_00.JPEG").write_bytes(APPLEDOUBLE)
    (train / WNIDS[0] / f"._{WNIDS[0]}_0.JPEG").write_bytes(APPLEDOUBLE)
    (val / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (val / WNIDS[1] / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (train / WNIDS[2] / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (val / "__MACOSX" / WNIDS[0]).mkdir(parents=True)
    (val / "__MACOSX" / WNIDS[0] / "._ILSVRC2012_val_00.JPEG").write_bytes(APPLEDOUBLE)


def test_os_metadata_beside_the_images_is_skipped_by_the_run_and_by_data_check(root, tmp_path, capsys):  # noqa: F811
    """An AppleDouble ._x.JPEG was counted as an image (7 test images where there are 6, 'ok') and the
    run then failed decoding it after writing its first files; __MACOSX was refused as a class folder."""
    from forgetlab.cli import main

    data = tmp_path / "data"
    shutil.copytree(root, data)
    clean = build_task("imagenet", DataConfig(root=str(data)))
    _with_os_metadata(data)
    task = build_task("imagenet", DataConfig(root=str(data)))
    assert (len(task.test), len(task.train)) == (6, 9)
    assert task.test.paths == clean.test.paths and task.train.paths == clean.train.paths
    out = tmp_path / "runs"
    overrides = [
        f"data.root={data}",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        "backbone.num_classes=3",
        f"out_dir={out}",
        "name=mac",
    ]
    assert main(["data", "check", *SMOKE, *overrides]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("imagenet "))
    assert line.endswith("3 classes, train 9 / test 6 images"), line
    assert main(["run", *SMOKE, *overrides]) == 0
    records = json.loads((out / "mac" / "upstream_eval.json").read_text())
    assert [record["images"] for record in records] == [6, 6]  # what 'data check' counted, at every row


def test_flat_val_skips_appledouble_files_beside_the_solution_file(root, tmp_path):  # noqa: F811
    """A ._ILSVRC2012_val_*.JPEG had no row in LOC_val_solution.csv: the whole of ImageNet was refused."""
    flat = tmp_path / "imagenet" / "val"
    flat.mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate(WNIDS):
        _jpg(flat / f"ILSVRC2012_val_0000000{i}.JPEG", i)
        (flat / f"._ILSVRC2012_val_0000000{i}.JPEG").write_bytes(APPLEDOUBLE)
        rows.append(f"ILSVRC2012_val_0000000{i},{wnid} 1 2 3 4")
    (flat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "imagenet" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    task = build_task("imagenet", DataConfig(root=str(tmp_path)))
    assert len(task.test) == 3 and sorted(task.test.labels.tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    "name",
    [
        ".DS_Store",
        "._image.JPEG",
        "Thumbs.db",
        "thumbs.db",
        "desktop.ini",
        "Desktop.ini",
        "__MACOSX",
        "ehthumbs.db",
        ".hidden",
    ],
)
def test_os_metadata_names_are_skipped_and_image_names_are_not(tmp_path, name):
    from forgetlab.data.files import is_os_metadata, listed

    (tmp_path / name).write_bytes(b"")
    (tmp_path / "n01440764_0.JPEG").write_bytes(b"")
    (tmp_path / "_underscore.jpg").write_bytes(b"")
    assert is_os_metadata(name) and [p.name for p in listed(tmp_path)] == ["_underscore.jpg", "n01440764_0.JPEG"]


def test_every_listing_of_dataset_files_goes_through_one_helper():
    """No module of forgetlab.data lists a folder itself (iterdir, glob, rglob, os.walk, os.listdir,
    os.scandir) but listing.listed, so no listing can forget the OS metadata rule."""
    folder = Path(__file__).resolve().parents[1] / "src" / "forgetlab" / "data"
    listing = {"iterdir", "glob", "rglob", "walk", "listdir", "scandir"}
    offenders = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]:
            calls = [
                node.func.attr
                for node in ast.walk(function)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            ]
            if listing & set(calls) and (path.name, function.name) != ("listing.py", "listed"):
                offenders.append(f"{path.name}:{function.name}")
    assert offenders == []


# ------------------------------------------------------------------------------------------ one pass
@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No Hugging Face cache and HF_HUB_OFFLINE=1 (huggingface_hub reads both once, at import)."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def _lines(out: str) -> dict[str, str]:
    """Report lines by their first word (the input's name; two weights lines get a suffix)."""
    lines: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("  "):
            name = re.split(r" {2,}", line.strip())[0].split(" MISSING")[0].split(" ok")[0].split(" INVALID")[0]
            lines[name if name not in lines else f"{name}#2"] = line
    return lines


def test_data_check_of_a_paper2_preset_lists_every_missing_input_at_once(root, tmp_path, capsys, offline_hub):  # noqa: F811
    """It exited 0 with every dataset missing; a run then met one missing piece per try."""
    from forgetlab.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", "paper2-lora-r4", "--root", str(empty)]) == 2
    lines = _lines(capsys.readouterr().out)
    assert {name for name, line in lines.items() if "MISSING" in line} == {
        "weights",
        "imagenet",
        "imagenet train/",
        "cifar100",
    }
    assert (
        str(empty / "imagenet" / "train") in lines["imagenet train/"]
        and "ILSVRC2012_img_train.tar" in lines["imagenet train/"]
    )
    assert "eval.upstream_evaluator=knn" in lines["imagenet train/"] and "cifar-100-python.tar.gz" in lines["cifar100"]
    assert (
        "huggingface.co/timm/vit_base_patch16_224.dino" in lines["weights"] and "backbone.weights=" in lines["weights"]
    )
    # ImageNet val/ present, train/ absent: the k-NN bank's folder is still required
    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.rmtree(data / "imagenet" / "train")
    assert main(["data", "check", "--preset", "paper2-lora-r4", "backbone.random_init=true", f"data.root={data}"]) == 2
    lines = _lines(capsys.readouterr().out)
    assert [name for name, line in lines.items() if "MISSING" in line or "INVALID" in line] == ["imagenet train/"]
    assert lines["imagenet"].endswith("3 classes, train 0 / test 6 images") and "wordnet" in lines


def test_data_check_for_a_paper_covers_every_preset_of_it(root, tmp_path, capsys, offline_hub):  # noqa: F811
    from forgetlab.cli import main

    assert (
        main(["data", "check", "--for", "paper1", "--root", str(root)]) == 2
    )  # the weights of both backbones are absent
    lines = _lines(capsys.readouterr().out)
    weights = [line for name, line in lines.items() if name.startswith("weights")]
    assert (
        len(weights) == 2
        and any("resnet50.a1_in1k" in line for line in weights)
        and any("augreg_in1k" in line for line in weights)
    )
    assert all("MISSING" in line for line in weights)
    datasets = {name for name, line in lines.items() if " ok " in line and not name.startswith(("weights", "wordnet"))}
    assert {
        "imagenet",
        "stanford_cars",
        "flowers102",
        "fgvc_aircraft",
        "cub200",
        "stanford_cars:samples_half1",
        "cub200:samples_last20",
    } <= datasets  # every split any paper-1 preset trains
    assert "imagenet train/" not in lines  # paper 1 scores ImageNet with its head: no k-NN bank
    assert main(["data", "check", "--for", "paper2", "--root", str(root)]) == 2
    lines = _lines(capsys.readouterr().out)
    assert lines["imagenet train/"].split()[2] == "ok" and "every paper2 preset" in lines["weights"]


def test_run_refuses_with_the_complete_list_before_writing_anything(root, tmp_path, capsys):  # noqa: F811
    """The run stopped at the first missing piece (cifar100), then at the next (ImageNet train/, as
    'needs the upstream train split ... or use eval.upstream_evaluator=head', which then failed too)."""
    from forgetlab.cli import main

    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.rmtree(data / "imagenet" / "train")
    shutil.rmtree(data / "cifar-100-python")
    out = tmp_path / "runs"
    overrides = [f"data.root={data}", "backbone.random_init=true", "backbone.image_size=32", f"out_dir={out}"]
    assert main(["run", "--preset", "paper2-lora-r4", *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("forgetlab: error: 2 inputs this run needs are missing or invalid")
    problems = err.splitlines()[1:]
    assert (
        len(problems) == 2
        and problems[0].startswith("  imagenet train/ MISSING")
        and problems[1].startswith("  cifar100")
    )
    assert "upstream_evaluator=head" not in err and not out.exists()
    assert main(["data", "check", "--preset", "paper2-lora-r4", *overrides]) == 2  # the same lines
    assert [line for line in capsys.readouterr().out.splitlines() if "MISSING" in line] == problems


def test_a_headless_backbone_with_the_head_evaluator_is_told_the_fix_that_works(root, tmp_path):  # noqa: F811
    """It was told 'set data.upstream ... (e.g. data.upstream=imagenet)', which was already set."""
    from forgetlab import config as config_module
    from forgetlab.runner import run

    out = [f"out_dir={tmp_path}", "data.max_test=4", "data.max_train=4"]
    base = [
        *SMOKE,
        f"data.root={root}",
        "data.upstream=imagenet",
        "data.tasks=[cifar100]",
        "backbone.num_classes=0",
        *out,
    ]
    with pytest.raises(ConfigError) as caught:
        run(config_module.resolve({}, [*base, "eval.upstream_evaluator=head"]), log=lambda message: None)
    message = str(caught.value)
    assert "data.upstream=imagenet" not in message and "eval.upstream_evaluator=knn or probe" in message
    folder = run(
        config_module.resolve({}, [*base, "eval.upstream_evaluator=knn", "eval.knn_k=2", "name=knn"]),
        log=lambda message: None,
    )
    assert folder.completed_tasks() == 1  # the suggested fix runs


def test_presets_cost_counts_the_knn_bank_and_every_evaluation_pass():
    """Paper 2's estimate (0.4 h) counted 1.28 M training images and ImageNet val only."""
    from forgetlab.presets import IMAGENET_TRAIN, PRESETS

    full = PRESETS["paper2-full"]
    # the pretrained bank and the fine-tuned one; val at 2 rows; CIFAR-100 test at row 1 and 10,000 / 500 selections
    assert full.evaluation_images() == {
        "upstream test": 100_000,
        "k-NN bank": 2 * 1_281_167,
        "task tests": 10_000,
        "model selection": 200_000,
    }
    assert "about 0.6 h" in full.expected_time and "k-NN bank 2 x 1,281,167" in full.expected_time
    assert PRESETS["paper2-linear"].evaluation_images()["k-NN bank"] == IMAGENET_TRAIN  # the backbone never changes
    vit = PRESETS[
        "paper1-vit"
    ].evaluation_images()  # row i scores tasks 1..i: Cars 4x, Flowers 3x, Aircraft 2x, CUB once
    assert vit == {
        "upstream test": 250_000,
        "k-NN bank": 0,
        "task tests": 4 * 8041 + 3 * 6149 + 2 * 3333 + 5794,
        "model selection": 0,
    }
    assert PRESETS["paper1-vit-long"].evaluation_images()["task tests"] == 8041 + 14190 + 17523 + 5 * 23317
