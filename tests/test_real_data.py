"""The real datasets' loaders on tiny copies of their on-disk layouts, the k-NN evaluator against a
hand computation, and real-size weights through the local-file path."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from forgetlab.config import BackboneConfig, DataConfig, PreprocessConfig
from forgetlab.data import build_task
from forgetlab.errors import ConfigError, DataError
from forgetlab.evaluate import confidence_interval, knn_predict
from forgetlab.runtime import Runtime

WNIDS = ["n02958343", "n02691156", "n01530575"]  # car, airplane, brambling


def _jpg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One data root holding a tiny copy of every real dataset, in its real layout."""
    root = tmp_path_factory.mktemp("datasets")
    for i, wnid in enumerate(WNIDS):  # ImageNet: wnid folders, 2 val + 3 train images each
        for j in range(2):
            _jpg(root / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{i}{j}.JPEG", i * 10 + j)
        for j in range(3):
            _jpg(root / "imagenet" / "train" / wnid / f"{wnid}_{j}.JPEG", 100 + i * 10 + j)
    cifar = root / "cifar-100-python"
    cifar.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        data = {
            "data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
            "fine_labels": [i % 3 for i in range(count)],
        }
        (cifar / split).write_bytes(pickle.dumps(data))
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bear", "cloud"]}))
    cars = root / "stanford_cars"
    savemat(
        cars / "devkit" / "cars_meta.mat" if (cars / "devkit").mkdir(parents=True) is None else None,
        {"class_names": np.array(["AM General Hummer 2000", "Audi R8 2012"], dtype=object)},
    )
    annotations = lambda names, classes: {
        "annotations": np.array(  # noqa: E731
            [(n, c) for n, c in zip(names, classes)], dtype=[("fname", object), ("class", np.uint8)]
        )
    }
    savemat(cars / "devkit" / "cars_train_annos.mat", annotations(["00001.jpg", "00002.jpg", "00003.jpg"], [1, 2, 2]))
    savemat(cars / "cars_test_annos_withlabels.mat", annotations(["00001.jpg", "00002.jpg"], [2, 1]))
    for split, count in (("train", 3), ("test", 2)):
        for n in range(1, count + 1):
            _jpg(cars / f"cars_{split}" / f"{n:05d}.jpg", n)
    flowers = root / "flowers-102"
    for n in range(1, 8):
        _jpg(flowers / "jpg" / f"image_{n:05d}.jpg", n)
    savemat(flowers / "imagelabels.mat", {"labels": np.array([1, 2, 1, 2, 102, 1, 102])})
    savemat(flowers / "setid.mat", {"trnid": np.array([1, 2]), "valid": np.array([3, 7]), "tstid": np.array([4, 5, 6])})
    aircraft = root / "fgvc-aircraft-2013b" / "data"
    aircraft.mkdir(parents=True)
    (aircraft / "variants.txt").write_text("707-320\nA380\n")
    (aircraft / "images_variant_trainval.txt").write_text("1000001 707-320\n1000002 A380\n1000003 A380\n")
    (aircraft / "images_variant_train.txt").write_text("1000001 707-320\n1000003 A380\n")
    (aircraft / "images_variant_test.txt").write_text("1000004 707-320\n")
    for n in range(1, 5):
        _jpg(aircraft / "images" / f"100000{n}.jpg", n)
    cub = root / "CUB_200_2011"
    cub.mkdir()
    (cub / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (cub / "images.txt").write_text(
        "1 001.Black_footed_Albatross/a.jpg\n2 002.Laysan_Albatross/b.jpg\n3 002.Laysan_Albatross/c.jpg\n"
    )
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    (cub / "image_class_labels.txt").write_text("1 1\n2 2\n3 2\n")
    (cub / "bounding_boxes.txt").write_text("1 2.0 3.0 10.0 8.0\n2 0.0 0.0 24.0 20.0\n3 1.0 1.0 5.0 5.0\n")
    for name in ("001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg", "002.Laysan_Albatross/c.jpg"):
        _jpg(cub / "images" / name, len(name))
    return root


@pytest.mark.parametrize(
    "name,classes,train_labels,test_labels,domain",
    [
        ("imagenet", 3, [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 1, 1, 2, 2], None),  # labels: sorted wnids
        ("cifar100", 3, [0, 1, 2, 0, 1, 2], [0, 1, 2, 0], "object.n.01"),
        ("stanford_cars", 2, [0, 1, 1], [1, 0], "car.n.01"),
        ("flowers102", 102, [0, 1], [1, 101, 0], "flower.n.01"),  # trnid only (paper 1's code)
        ("flowers102:trainval", 102, [0, 1, 0, 101], [1, 101, 0], "flower.n.01"),
        ("fgvc_aircraft", 2, [0, 1], [0], "airplane.n.01"),  # the 'train' split (paper 1's code)
        ("fgvc_aircraft:trainval", 2, [0, 1, 1], [0], "airplane.n.01"),
        ("cub200:nocrop", 2, [0, 1], [1], "bird.n.01"),
        ("cub200", 2, [0, 1], [1], "bird.n.01"),
    ],
)
def test_each_loader_reads_its_real_layout(root, name, classes, train_labels, test_labels, domain):
    task = build_task(name, DataConfig(root=str(root)))
    assert len(task.classes) == classes and task.domain_synset == domain
    assert task.train.labels.tolist() == train_labels and task.test.labels.tolist() == test_labels
    image, label = task.test[0]
    assert isinstance(image, Image.Image) and label == test_labels[0]


def test_imagenet_classes_are_wordnet_synsets_and_flat_val_reads_the_solution_file(root, tmp_path):
    task = build_task("imagenet", DataConfig(root=str(root)))
    assert task.class_synsets == sorted(WNIDS) and task.classes[2] == "car"
    flat = tmp_path / "imagenet" / "val"
    flat.mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate(WNIDS):
        _jpg(flat / f"ILSVRC2012_val_0000000{i}.JPEG", i)
        rows.append(f"ILSVRC2012_val_0000000{i},{wnid} 1 2 3 4")
    (tmp_path / "imagenet" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    flat_task = build_task("imagenet", DataConfig(root=str(tmp_path)))
    assert flat_task.test.labels.tolist() == [0, 1, 2] and len(flat_task.train) == 0
    assert [p.name for p in flat_task.test.paths] == [f"ILSVRC2012_val_0000000{i}.JPEG" for i in (2, 1, 0)]


def test_class_splits_for_the_long_setting(root):
    half = build_task("stanford_cars:half2", DataConfig(root=str(root)))
    assert half.name == "stanford_cars:half2" and half.classes == ["Audi R8 2012"]
    assert half.train.labels.tolist() == [0, 0] and len(half.test) == 1 and half.test[0][1] == 0
    with pytest.raises(ConfigError, match="half1"):
        build_task("stanford_cars:third", DataConfig(root=str(root)))


def test_missing_or_malformed_datasets_give_one_line_errors(root, tmp_path, monkeypatch):
    monkeypatch.delenv("FORGETLAB_DATA", raising=False)
    with pytest.raises(ConfigError, match="set data.root=/path/to/datasets or FORGETLAB_DATA"):
        build_task("cub200", DataConfig())
    with pytest.raises(DataError, match="CUB_200_2011.tgz"):
        build_task("cub200", DataConfig(root=str(tmp_path)))
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-100 pickle"):
        build_task("cifar100", DataConfig(root=str(tmp_path)))


def test_preprocessing_follows_the_backbones_pretrained_cfg(root):
    from forgetlab.data.files import preprocess_for
    from forgetlab.models.backbones import create

    preprocess = preprocess_for(
        create("vit_base_patch16_224.augreg_in1k", num_classes=0), image_size=32, config=PreprocessConfig()
    )
    task = build_task("cub200", DataConfig(root=str(root)), preprocess)
    image, _ = task.test[0]
    assert image.shape == (3, 32, 32) and preprocess.input_size == (3, 32, 32)
    # augreg_in1k normalises with mean = std = 0.5: every value lies in [-1, 1].
    assert image.min() >= -1 and image.max() <= 1


# ----------------------------------------------------------------------------- k-NN
def test_knn_equals_a_hand_computation():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # Query 0, k=3: neighbours sims 1.0 (class 0), 0.8 (class 1), 0.0 (class 1), T=0.5:
    # votes class 0 = e^2 = 7.39, class 1 = e^1.6 + e^0 = 5.95 -> class 0. With T=5: 1.22 vs 1.17+1 -> class 1.
    assert knn_predict(bank, labels, query[:1], k=3, temperature=0.5, num_classes=3).tolist() == [0]
    assert knn_predict(bank, labels, query[:1], k=3, temperature=5.0, num_classes=3).tolist() == [1]
    # Query 1 (0.6, 0.8): sims 0.6, 0.96, 0.8, -0.6; k=1 -> the bank's second item, class 1.
    assert knn_predict(bank, labels, query, k=1, temperature=0.07, num_classes=3).tolist() == [0, 1]
    assert confidence_interval(0.5, 100) == pytest.approx(1.96 * 0.05)


def test_knn_evaluator_scores_upstream_with_a_cached_bank(root):
    from forgetlab.data.files import preprocess_for
    from forgetlab.evaluate import KNNEvaluator
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel

    backbone = load_backbone(BackboneConfig(name="resnet18", random_init=True, num_classes=0, image_size=32))
    model = MultiHeadModel(backbone.model)
    task = build_task("imagenet", DataConfig(root=str(root)), preprocess_for(backbone.model, 32, PreprocessConfig()))
    evaluator = KNNEvaluator(task.train, k=1, ks=(1, 3))
    result = evaluator(model, task.test, Runtime(eval_batch_size=4))
    assert set(result.at_k) == {1, 3} and len(result.predictions) == 6 and result.at_k[1] == result.accuracy
    assert result.record() == {"knn": {"1": result.at_k[1], "3": result.at_k[3]}}
    bank = next(iter(evaluator._cache.values()))
    evaluator(model, task.test, Runtime(eval_batch_size=4))
    assert next(iter(evaluator._cache.values())) is bank  # same backbone: the bank is reused
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(1.5)
    evaluator(model, task.test, Runtime(eval_batch_size=4))
    assert next(iter(evaluator._cache.values())) is not bank  # the backbone changed: recomputed


# ----------------------------------------------------------------------------- weights
def test_real_size_weights_round_trip_through_a_local_file(tmp_path):
    from forgetlab.models.backbones import create, load_backbone
    from forgetlab.results import save_safetensors

    torch.manual_seed(0)
    original = create("vit_base_patch16_224", num_classes=1000).eval()
    save_safetensors(tmp_path / "model.safetensors", original.state_dict())
    loaded = load_backbone(BackboneConfig(name="vit_base_patch16_224", weights=str(tmp_path / "model.safetensors")))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), original(images))
    with pytest.raises(DataError, match="weights file .* not found; check backbone.weights"):
        load_backbone(BackboneConfig(name="vit_base_patch16_224", weights=str(tmp_path / "missing.safetensors")))
    with pytest.raises(DataError, match="set backbone.weights"):
        load_backbone(BackboneConfig(name="vit_base_patch16_224"))


def test_pretrained_tag_without_cache_or_network_names_the_file_to_place(monkeypatch, tmp_path):
    from forgetlab.models.backbones import load_backbone

    import huggingface_hub.constants as hub

    # huggingface_hub reads these variables once, at import: set its constants too, or the test would wait
    # out network time-outs (46 s here) instead of failing at once as a user's offline run does.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(
        DataError, match=r"huggingface.co/timm/resnet18.a1_in1k and set backbone.weights=/path/to/model.safetensors"
    ):
        load_backbone(BackboneConfig(name="resnet18.a1_in1k"))


# ----------------------------------------------------------------------------- decoded cache, data check, presets
def test_decoded_cache_is_built_once_and_reused(root, monkeypatch, tmp_path):
    from forgetlab.data.files import preprocess_for
    from forgetlab.models.backbones import create

    forgetlab_home = tmp_path / "home"  # its own: other tests leave decoded arrays in the session's home
    monkeypatch.setenv("FORGETLAB_HOME", str(forgetlab_home))

    preprocess = preprocess_for(create("resnet18", num_classes=0), image_size=32, config=PreprocessConfig())
    config = DataConfig(root=str(root), cache_decoded=True)
    task = build_task("fgvc_aircraft", config, preprocess)
    files = sorted((forgetlab_home / "decoded").glob("*.npy"))
    assert len(files) == 2 and task.train.images.shape == (2, 34, 34, 3)  # ceil(32 / 0.95), resnet18.a1_in1k crop
    assert task.test[0][0].shape == (3, 32, 32) and task.train.labels.tolist() == [0, 1]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = build_task("fgvc_aircraft", config, preprocess)
    assert np.array_equal(np.asarray(again.train.images), np.asarray(task.train.images))
    assert sorted((forgetlab_home / "decoded").glob("*")) == files


def test_data_check_lists_every_dataset(root, capsys, monkeypatch, tmp_path):
    import nltk

    from forgetlab import wordnet
    from forgetlab.cli import main

    assert main(["data", "check", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stanford_cars   ok" in out and "train 3 / test 2 images" in out
    assert "imagenet        ok" in out and "train 9 / test 6 images" in out
    assert "wordnet         ok" in out and "WordNet 3.0" in out
    assert (
        main(["data", "check", "--root", str(root / "nowhere")]) == 0
    )  # no config: a missing dataset may not be needed
    out = capsys.readouterr().out
    assert "cub200          MISSING" in out and "CUB_200_2011.tgz" in out and "imagenet train/ MISSING" in out
    assert main(["data", "check", "--root", str(root / "nowhere"), "--strict"]) == 2
    capsys.readouterr()
    # A machine with no WordNet anywhere (no apt, no NLTK copy): the line says how to get one.
    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(nltk.data, "path", [])
    assert main(["data", "check", "--root", str(root), "--strict"]) == 2
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("wordnet"))
    assert "MISSING" in line and "FORGETLAB_WORDNET" in line and "apt-get install wordnet-base" in line


def test_every_preset_resolves_to_its_papers_settings():
    from forgetlab import config as config_module
    from forgetlab.presets import PRESETS, preset_tree

    assert {
        "paper1-vit",
        "paper1-resnet",
        "paper1-vit-long",
        "paper1-vit-lwf",
        "paper2-full",
        "paper2-top3",
        "paper2-linear",
        "paper2-lora-r4",
        "paper2-lora-r8",
        "paper2-lora-r16",
        "paper2-block-p1",
        "paper2-block-p4",
    } <= set(PRESETS)
    for name in PRESETS:
        config = config_module.resolve(preset_tree(name))
        assert config.name == name and config.data.upstream == "imagenet"
    vit = config_module.resolve(preset_tree("paper1-vit"))
    assert vit.train.task_epochs == {"stanford_cars": 20, "flowers102": 60, "fgvc_aircraft": 40, "cub200": 40}
    assert (vit.train.lr, vit.train.weight_decay, vit.train.batch_size, vit.method.alpha, vit.method.dropout) == (
        1e-3,
        1e-2,
        32,
        None,
        0.1,
    )
    assert config_module.resolve(preset_tree("paper1-vit-lwf")).lwf.alpha == 5
    long = config_module.resolve(preset_tree("paper1-vit-long")).data.tasks
    assert (
        long[:2] == ["stanford_cars:samples_half1", "flowers102:samples_half1"]
        and long[4] == "stanford_cars:samples_half2"
    )
    dino = config_module.resolve(preset_tree("paper2-lora-r4"))
    assert (dino.eval.upstream_evaluator, dino.train.optimizer, dino.train.max_steps, dino.method.targets) == (
        "knn",
        "sgd",
        10_000,
        "q,v",
    )
    with pytest.raises(ConfigError, match="forgetlab presets"):
        preset_tree("paper3")


_PRESET_NAMES = sorted(__import__("forgetlab.presets", fromlist=["PRESETS"]).PRESETS)
# Every other preset runs on the device pipeline (what data.pipeline=auto picks on CUDA), the others on PIL
# (the CPU's): both pipelines go through every preset family, for the suite's time of one.
_PRESET_PIPELINES = [(name, "device" if index % 2 else "pil") for index, name in enumerate(_PRESET_NAMES)]


@pytest.mark.parametrize(("name", "pipeline"), _PRESET_PIPELINES, ids=[f"{n}-{p}" for n, p in _PRESET_PIPELINES])
def test_presets_run_end_to_end_at_smoke_scale(root, tmp_path, name, pipeline):
    """Random-init real architectures at 32 px, two images a task, one step: the whole real pipeline."""
    from forgetlab import config as config_module
    from forgetlab.presets import preset_tree
    from forgetlab.runner import run

    smoke = [
        f"data.root={root}",
        "backbone.random_init=true",
        "backbone.image_size=32",
        "data.max_train=4",
        "data.max_test=4",
        "data.workers=0",
        "train.max_steps=1",
        "train.batch_size=2",
        "eval.batch_size=8",
        f"out_dir={tmp_path}",
        f"data.pipeline={pipeline}",
    ]
    if name.startswith("paper1"):
        smoke.append("backbone.num_classes=3")  # the tiny ImageNet copy has 3 classes
    else:
        smoke += ["eval.knn_k=2", "eval.upstream_subset=4"]
    config = config_module.resolve(preset_tree(name), smoke)
    folder = run(config, log=lambda message: None)
    matrix = folder.read_matrix().as_array()
    from forgetlab.data.registry import task_column

    columns = dict.fromkeys(task_column(t) for t in config.data.tasks)  # a long-setting task trains twice, one column
    assert matrix.shape == (len(config.data.tasks) + 1, len(columns) + 1)
    assert not np.isnan(matrix[-1]).any()  # the last row scores every task
    assert folder.completed_tasks() == len(config.data.tasks)
    tasks = json.loads(
        (folder.path / "tasks.json").read_text(), parse_constant=lambda word: pytest.fail(f"tasks.json holds {word}")
    )
    assert [task["steady_images_per_second"] for task in tasks] == [None] * len(tasks)  # one step a task: all warm-up
    records = json.loads(folder.upstream_eval.read_text())
    assert len(records) == len(config.data.tasks) + 1
    if name.startswith("paper2"):
        assert set(records[0]["knn"]) == {"2", "10", "20", "100", "200"}
        assert records[0]["images"] == 4 and records[0]["ci95"] == pytest.approx(
            confidence_interval(records[0]["accuracy"], 4)
        )
