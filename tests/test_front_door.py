"""The first hour's small things: usage errors on one line, commands printed so they paste into a shell,
run names that read well, one answer to where WordNet is, shared caches built once, and a run
folder's record of every start and resume."""

from __future__ import annotations

import pytest

from forgetlab.cli import main


def _exit(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's exits
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--nope"], "forgetlab run: unrecognized arguments: --nope (see forgetlab run --help)"),
        (["show"], "forgetlab show: the following arguments are required: RUN_DIR | SWEEP_DIR"),
        (["run", "--preset"], "forgetlab run: argument --preset: expected one argument (see forgetlab run --help)"),
        (["data", "check", "--nope"], "forgetlab data check: unrecognized arguments: --nope"),
        (["sweep"], "forgetlab sweep: the following arguments are required: SWEEP.yaml"),
        (["report", "runs", "--after", "x"], "forgetlab report: argument --after: invalid choice: 'x'"),
        (["explain", "--nope", "a=1"], "forgetlab explain: unrecognized arguments: --nope"),
        ([], "forgetlab: the following arguments are required: COMMAND (see forgetlab --help)"),
        (["nope"], "forgetlab: argument COMMAND: invalid choice: 'nope'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_command_and_its_help(argv, expected, capsys):
    code, out, err = _exit(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(expected), err
    command = expected.split(":")[0]
    assert err.rstrip().endswith(f"(see {command} --help)")


@pytest.mark.parametrize("argv", [["run", "--help"], ["data", "check", "--help"], ["--help"]])
def test_help_still_prints_the_usage_and_exits_0(argv, capsys):
    code, out, err = _exit(argv, capsys)
    assert code == 0 and err == "" and out.startswith(f"usage: forgetlab {' '.join(argv[:-1])}".rstrip())
    assert len(out.splitlines()) > 3


# ------------------------------------------------------------------------------------------- run names
NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+")


def _changed_value(field, choices: dict):
    """Values to try for one method option: another of its choices, the other boolean, a larger number, or
    a small value for an option left unset."""
    default = field.default
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, (int, float)):
        return [default * 2 or 2, default + 1]
    if default is None:
        return [2, 1, [1], 0.5, "q"]
    return [choice for choice in choices.get(field.name, ()) if choice != default]


def _readable(name: str) -> bool:
    return set(name) <= NAME_CHARACTERS and not any(word in name for word in ("None", "True", "False", "[]"))


def test_every_methods_default_run_is_named_by_the_method_alone_and_one_changed_option_by_its_value():
    import dataclasses

    from forgetlab import config as config_module
    from forgetlab.errors import ConfigError
    from forgetlab.methods import method_class, method_names

    default_method = config_module.resolve({}, []).method.name
    named_options = 0
    for method in method_names():
        base = config_module.resolve({}, [f"method.name={method}"])
        assert base.name == ("default" if method == default_method else method), (method, base.name)
        choices = config_module.documented_choices(base.method)
        for field in dataclasses.fields(method_class(method).Config):
            if field.name == "name" or not field.init:
                continue
            for value in _changed_value(field, choices):
                text = f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value).lower()
                try:
                    config = config_module.resolve({}, [f"method.name={method}", f"method.{field.name}={text}"])
                except ConfigError:
                    continue  # not a value this option takes with the others at their defaults
                if getattr(config.method, field.name) == field.default:
                    continue
                assert _readable(config.name) and config.name != base.name, (method, field.name, config.name)
                assert config.name.startswith(method if method != default_method else "")
                named_options += 1
                break
    assert named_options >= 10


def test_a_run_name_says_none_booleans_lists_and_comma_lists_in_words():
    from forgetlab import config as config_module

    def name(*overrides):
        return config_module.resolve({}, list(overrides)).name

    assert name("method.name=block_expansion") == "block_expansion"
    assert name("method.name=block_expansion", "method.copies=2", "method.positions=[2, 4]") == (
        "block_expansion-p2-positions2+4"
    )
    assert name("method.name=block_expansion", "method.copies=2", "method.split=3") == "block_expansion-p2-split3"
    assert name("method.targets=[q, v]") == "q+v"
    assert name("backbone.random_init=true") == "random_init"
    assert name("data.max_train=48", "method.rank=16") == "max_train48-r16"  # in the config's key order
    assert config_module.flag_token("data.max_train", None) == "no_max_train"
    assert config_module.flag_token("lwf.train_earlier_heads", False) == "no_train_earlier_heads"
    assert config_module.flag_token("method.positions", []) == "no_positions"
    assert config_module.flag_token("method.rank", 4) is None


def test_sweep_cells_name_none_and_booleans_in_words_and_an_earlier_folder_keeps_its_name(tmp_path):
    import yaml

    from forgetlab.sweep import load_sweep

    path = tmp_path / "s.yaml"
    definition = {
        "name": "s",
        "out_dir": str(tmp_path),
        "grid": {
            "data.max_train": [None, 48],
            "method": [
                {"name": "block_expansion", "split": None},
                {"name": "block_expansion", "copies": 2, "split": 3},
            ],
        },
    }
    path.write_text(yaml.safe_dump(definition))
    names = [cell.name for cell in load_sweep(path).cells]
    assert names == [
        "no_max_train-block_expansion-no_split",
        "no_max_train-block_expansion-p2-split3",
        "max_train48-block_expansion-no_split",
        "max_train48-block_expansion-p2-split3",
    ]
    (tmp_path / "s" / "max_trainNone-block_expansion-splitNone").mkdir(parents=True)  # as forgetlab named it before
    assert [cell.name for cell in load_sweep(path).cells][0] == "max_trainNone-block_expansion-splitNone"


# ------------------------------------------------------------------------------- environment history
class _Stopped(Exception):
    pass


def test_a_run_resumed_under_another_commit_records_both_with_the_phase_each_began(
    random_backbones, tmp_path, monkeypatch, capsys
):
    import json

    from forgetlab import config as config_module
    from forgetlab import provenance
    from forgetlab.runner import run
    from tests.conftest import tiny_overrides

    tiny = {"data.max_train": 16, "data.max_test": 16, "train.max_steps": 1, "train.batch_size": 8}
    config = config_module.load(None, tiny_overrides(random_backbones["offline_vit"], tmp_path, **tiny))

    def stop_after_first_task(message: str) -> None:
        if message.startswith("task 1/2"):
            raise _Stopped

    monkeypatch.setattr(provenance, "git_commit", lambda: "1111111111111111111111111111111111111111")
    with pytest.raises(_Stopped):
        run(config, log=stop_after_first_task)
    monkeypatch.setattr(provenance, "git_commit", lambda: "2222222222222222222222222222222222222222-dirty")
    folder = run(config, log=lambda message: None)
    environment = json.loads(folder.environment.read_text())
    history = environment["history"]
    assert [(entry["started_at_phase"], entry["git_commit"], entry["dirty"]) for entry in history] == [
        (0, "1111111111111111111111111111111111111111", False),
        (2, "2222222222222222222222222222222222222222-dirty", True),
    ]
    assert all(entry["date"] and entry["packages"]["torch"] for entry in history)
    assert history[0]["weights_sha256"] == history[1]["weights_sha256"] == environment["inputs"]["weights"]["sha256"]
    assert environment["git_commit"].startswith("2222")  # the top-level fields: the latest start, as before
    run(config, log=lambda message: None)  # a finished run resumed writes nothing
    assert json.loads(folder.environment.read_text()) == environment
    assert main(["show", str(folder.path)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ran in parts")]
    assert len(shown) == 1 and shown[0].startswith("ran in parts that differ: phases 0-1 under commit 11111111 (torch ")
    assert "phase 2 under commit 22222222-dirty (torch " in shown[0]


def test_an_environment_file_from_before_the_history_reads_as_one_start():
    from forgetlab.provenance import environment_history, history_line, with_start

    old = {"python": "3.11.2", "packages": {"torch": "2.5.1"}, "git_commit": "abcdef0123-dirty", "inputs": {}}
    assert environment_history(old) == [
        {
            "date": None,
            "started_at_phase": 0,
            "dirty": True,
            "python": "3.11.2",
            "platform": None,
            "packages": {"torch": "2.5.1"},
            "git_commit": "abcdef0123-dirty",
            "device": None,
            "device_name": None,
            "torch_threads": None,
            "weights_sha256": None,
        }
    ]
    current = {"python": "3.12.1", "packages": {"torch": "2.6.0"}, "git_commit": "0123456789", "inputs": {}}
    resumed = with_start(old, current, 3)
    assert [entry["started_at_phase"] for entry in resumed["history"]] == [0, 3]
    assert resumed["python"] == "3.12.1" and "history_before" not in resumed
    assert history_line(resumed, 4) == (
        "ran in parts that differ: phases 0-2 under commit abcdef01-dirty (torch 2.5.1, Python 3.11.2), "
        "phases 3-4 under commit 01234567 (torch 2.6.0, Python 3.12.1) (environment.json's history)"
    )
    assert history_line(with_start(None, current, 0), 4) is None
    assert "history_before" in with_start(None, current, 2)  # a missing file: earlier starts unknown


# ----------------------------------------------------------------------------------- caches built once
def _twice_at_once(build, started, results: list) -> None:
    """``build`` in two threads, the second started once the first is building."""
    import threading

    first = threading.Thread(target=lambda: results.append(build()))
    second = threading.Thread(target=lambda: results.append(build()))
    first.start()
    assert started.wait(30)
    second.start()
    first.join(60)
    second.join(60)


def test_an_offline_backbone_asked_for_twice_at_once_is_pretrained_once(tmp_path, monkeypatch, capsys):
    import threading
    import time
    from types import SimpleNamespace

    from forgetlab import pretrain as pretrain_module
    from forgetlab.models.backbones import offline_backbone_dir

    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path))
    builds, started = [], threading.Event()

    def fake_pretrain(name, *, device=None):
        builds.append(name)
        started.set()
        time.sleep(1.0)  # the second caller reaches the lock meanwhile
        folder = offline_backbone_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(f"weights {len(builds)}".encode())

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    config = SimpleNamespace(name="offline_vit", weights=None, random_init=False)
    results = []

    def ensure():
        pretrain_module.ensure_pretrained(config)
        return (offline_backbone_dir("offline_vit") / "model.safetensors").read_bytes()

    _twice_at_once(ensure, started, results)
    assert builds == ["offline_vit"] and results == [b"weights 1", b"weights 1"]
    waited = [line for line in capsys.readouterr().err.splitlines() if "waiting for" in line]
    assert len(waited) == 1 and waited[0].startswith("forgetlab: waiting for pid ")
    assert waited[0].endswith(f"which is pretraining offline_vit into {offline_backbone_dir('offline_vit')}")


def test_an_offline_world_dataset_asked_for_twice_at_once_is_built_once(tmp_path, monkeypatch):
    import threading
    import time

    import numpy as np

    from forgetlab.data import offline

    monkeypatch.setattr(offline, "world_dir", lambda: tmp_path / "world")
    builds, started = [], threading.Event()

    def fake_upstream():
        builds.append("upstream")
        started.set()
        time.sleep(1.0)
        return {"x_test": np.full((2, 3), len(builds))}

    monkeypatch.setitem(offline._BUILDERS, "upstream", fake_upstream)
    results = []
    _twice_at_once(lambda: offline.load_arrays("upstream")["x_test"].tolist(), started, results)
    assert builds == ["upstream"] and results == [[[1, 1, 1]] * 2] * 2
    assert sorted(path.name for path in (tmp_path / "world").iterdir()) == [".upstream.lock", "upstream.npz"]


def test_wordnet_copied_for_two_at_once_is_copied_once(tmp_path, monkeypatch):
    import threading
    import time

    from forgetlab import wordnet

    source = tmp_path / "dict"
    source.mkdir()
    (source / "data.noun").write_text("noun data\n")
    copies, started = [], threading.Event()
    copy = wordnet._copy_wordnet

    def slow_copy(target, source):
        copies.append(target)
        started.set()
        time.sleep(1.0)
        return copy(target, source)

    monkeypatch.setattr(wordnet, "_copy_wordnet", slow_copy)
    results = []
    _twice_at_once(lambda: wordnet.setup(tmp_path / "nltk_data", source), started, results)
    target = tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert copies == [target] and results == [target, target]
    assert (target / "data.noun").read_text() == "noun data\n" and (target / "lexnames").exists()


# ------------------------------------------------------------------------------- where WordNet is
def _wordnet_folder(folder):
    folder.mkdir(parents=True)
    (folder / "data.noun").write_text("  1 This is WordNet's noun data\n")
    return folder


def _provide(way: str, tmp_path, monkeypatch):
    """WordNet provided one way (the others absent); the folder it is expected at (None: nowhere)."""
    import zipfile

    import nltk

    from forgetlab import wordnet

    monkeypatch.delenv("FORGETLAB_WORDNET", raising=False)
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "usr-share-wordnet")  # Debian's place, empty
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk-data")])
    if way == "setting: a dict folder":
        monkeypatch.setenv("FORGETLAB_WORDNET", str(_wordnet_folder(tmp_path / "WordNet-3.0" / "dict")))
        return tmp_path / "WordNet-3.0" / "dict"
    if way == "setting: NLTK's wordnet.zip":
        bundle = tmp_path / "wordnet.zip"
        with zipfile.ZipFile(bundle, "w") as archive:
            archive.writestr("wordnet/data.noun", "  1 noun data\n")
        monkeypatch.setenv("FORGETLAB_WORDNET", str(bundle))
        return bundle
    if way == "setting: a folder without WordNet":
        monkeypatch.setenv("FORGETLAB_WORDNET", str(tmp_path))
        return None
    if way == "Debian's wordnet-base":
        return _wordnet_folder(tmp_path / "usr-share-wordnet")
    if way == "NLTK's data folder":
        return _wordnet_folder(tmp_path / "nltk-data" / "corpora" / "wordnet")
    if way == "forgetlab's copy only":
        copy = _wordnet_folder(tmp_path / "home" / "nltk_data" / "corpora" / "wordnet")
        (copy / "lexnames").write_text(wordnet.lexnames_text())
        return copy
    return None


@pytest.mark.parametrize(
    "way",
    [
        "setting: a dict folder",
        "setting: NLTK's wordnet.zip",
        "setting: a folder without WordNet",
        "Debian's wordnet-base",
        "NLTK's data folder",
        "forgetlab's copy only",
        "nowhere",
    ],
)
def test_setup_and_data_check_report_wordnet_at_the_same_place(way, tmp_path, monkeypatch):
    from forgetlab.data.sources import wordnet_source
    from forgetlab.data_check import MISSING, OK, wordnet_finding

    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path / "home"))
    expected = _provide(way, tmp_path, monkeypatch)
    setup_says = wordnet_source()
    check_says = wordnet_finding()
    if expected is None:
        assert setup_says.found is None and check_says.status == MISSING
        assert setup_says.detail in str(check_says.error)
    else:
        assert setup_says.found == check_says.where == str(expected) and check_says.status == OK
        assert wordnet_source().found == str(expected)  # the same after data check made forgetlab's copy


# --------------------------------------------------------------------------- commands that paste
AWKWARD = ["runs/my run", "data.tasks=[fontfamily, digits]", "it's", "a;b", "$HOME", ""]


def test_a_printed_command_splits_back_into_its_arguments():
    import shlex

    from forgetlab.errors import command
    from forgetlab.presets import PRESETS
    from forgetlab.reporting.page import probe_command

    assert shlex.split(command("report", *AWKWARD)) == ["forgetlab", "report", *AWKWARD]
    row = {"config.data.tasks": ["stanford_cars:samples_half1", "flowers"], "backbone": "vit b/16", "seed": 0}
    assert shlex.split(probe_command(row)) == [
        "forgetlab",
        "run",
        "method.name=linear",
        "backbone.name=vit b/16",
        "data.tasks=[stanford_cars:samples_half1, flowers]",
        "seed=0",
    ]
    for preset in PRESETS.values():
        assert shlex.split(preset.command)[:4] == ["forgetlab", "run", "--preset", preset.name]


def test_the_setup_lines_paste_into_a_shell_with_any_target_folder():
    import shlex

    from forgetlab.data.sources import offline_sources

    target = "/data/my data [x]"
    words = []
    for source in offline_sources(target):
        for line in source.without_root:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # ';' and '&&' apart, as a shell has them
            lexer.whitespace_split = True
            words += list(lexer)
    assert "FORGETLAB_FONTS_DIR=/data/my data [x]/usr/share/fonts" in words
    assert "FORGETLAB_WORDNET=/data/my data [x]/nltk_data/corpora/wordnet" in words
    assert "FORGETLAB_FASHION_MNIST_DIR=/data/my data [x]/fashion-mnist/FashionMNIST/raw" in words
    assert words[words.index("-d") + 1] == "/data/my data [x]/nltk_data"
    assert words.count("/data/my data [x]/debs") == 2  # mkdir and cd, before the fonts' packages are unpacked
    assert words[words.index("$deb") + 1] == "/data/my data [x]"  # dpkg -x "$deb" TARGET
    code = words[words.index("-c") + 1]
    assert (
        code
        == "import torchvision; torchvision.datasets.FashionMNIST('/data/my data [x]/fashion-mnist', download=True)"
    )


def test_the_messages_naming_a_command_quote_the_folder(tmp_path, capsys, monkeypatch):
    import shlex

    from forgetlab.errors import DataError
    from forgetlab.results import RunFolder, read_single_predictions

    folder = RunFolder(tmp_path / "my run")
    with pytest.raises(DataError) as error:
        read_single_predictions(folder, 1)
    pasted = str(error.value).split("; run ", 1)[1].split(" first", 1)[0]
    assert shlex.split(pasted) == ["forgetlab", "single-adapter", str(folder.path)]


def test_data_check_reports_the_data_root_a_run_reads(tmp_path, monkeypatch):
    from forgetlab.cli import _data_root
    from forgetlab.data.files import data_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FORGETLAB_DATA", "~/datasets")
    assert _data_root(None) == str(data_root(None)) == str(tmp_path / "datasets")  # data check's first line
    assert _data_root("~/other") == str(tmp_path / "other")
    monkeypatch.delenv("FORGETLAB_DATA")
    assert _data_root(None) is None


def test_a_knn_bank_two_runs_need_at_once_is_computed_once(tmp_path, monkeypatch):
    import threading
    import time

    import numpy as np
    import torch

    from forgetlab import evaluate
    from forgetlab.data.base import ArrayDataset

    bank = ArrayDataset(np.zeros((6, 4, 4), dtype=np.uint8), np.arange(6) % 3)
    calls, started = [], threading.Event()

    def slow_features(model, dataset, runtime, *, description, head=None):
        calls.append(description)
        started.set()
        time.sleep(1.0)
        return torch.arange(len(dataset) * 2, dtype=torch.float32).reshape(len(dataset), 2) + len(calls)

    monkeypatch.setattr(evaluate, "extract_features", slow_features)
    runs = [evaluate.KNNEvaluator(bank, k=1, ks=(1,), cache_dir=tmp_path) for _ in range(2)]
    results = []
    turn = iter(runs)
    _twice_at_once(lambda: next(turn)._bank(None, "samekey", None, None), started, results)
    assert calls == ["k-NN bank"] and sum(run.computed for run in runs) == 1
    assert torch.equal(results[0], results[1]) and results[0][0, 0].item() == 1.0
