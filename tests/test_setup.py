"""The offline world without root: 'forgetlab setup' names each input's setting, finds copies through
them, says how to get a missing one, and the world built from copies is the world built from Debian's
files."""

from __future__ import annotations

import shlex
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from forgetlab import wordnet
from forgetlab.cli import main
from forgetlab.data import fonts, offline
from forgetlab.data.sources import setup_report
from forgetlab.errors import DataError

SETTINGS = ("FORGETLAB_FONTS_DIR", "FORGETLAB_FASHION_MNIST_DIR", "FORGETLAB_WORDNET")


def _exports(lines: list[str]) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines that 'forgetlab setup' prints, as a dict."""
    exports = {}
    for line in lines:
        if line.strip().startswith("export "):
            name, _, value = shlex.split(line.strip(), comments=True)[1].partition("=")
            exports[name] = value
    return exports


def _copy_as_the_commands_leave_them(target: Path) -> None:
    """What the without-root commands leave in ``target``: the font packages unpacked (``dpkg -x``),
    torchvision's FashionMNIST raw folder, NLTK's corpora/wordnet (here copied from this machine)."""
    for _, paths in fonts.CATALOGUE.values():
        for path in paths:
            copy = target / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    raw = target / "fashion-mnist" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in offline.FASHION_MNIST_FILES:
        shutil.copyfile(Path(offline.FASHION_MNIST_DEBIAN_DIR) / name, raw / name)
    shutil.copytree(wordnet.WORDNET_DIR, target / "nltk_data" / "corpora" / "wordnet")


def test_torchvision_leaves_fashion_mnist_where_setup_says():
    from torchvision.datasets import FashionMNIST

    dataset = object.__new__(FashionMNIST)  # the folder torchvision downloads into, without downloading
    dataset.root = "/t/fashion-mnist"
    assert Path(dataset.raw_folder) == Path("/t/fashion-mnist/FashionMNIST/raw")
    assert {Path(url).name for url, _ in FashionMNIST.resources} == set(offline.FASHION_MNIST_FILES)


def test_setup_says_how_to_get_every_missing_input_without_root(tmp_path, monkeypatch, capsys):
    for name in SETTINGS[:2]:
        monkeypatch.setenv(name, str(tmp_path / "empty"))
    monkeypatch.setenv("FORGETLAB_WORDNET", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    lines, missing = setup_report(str(tmp_path / "t"))
    assert missing == ["fonts", "Fashion-MNIST", "WordNet"]
    text = "\n".join(lines)
    assert "0 of 80 font files" in text and "0 of 4 files" in text
    packages = sorted({package for package, _ in fonts.CATALOGUE.values()})
    assert f"apt-get download {' '.join(packages)}" in text and 'dpkg -x "$deb"' in text
    assert "torchvision.datasets.FashionMNIST" in text and "nltk.downloader" in text
    assert "sudo apt-get install dataset-fashion-mnist" in text and "sudo apt-get install wordnet-base" in text
    assert _exports(lines) == {
        "FORGETLAB_FONTS_DIR": f"{tmp_path}/t/usr/share/fonts",
        "FORGETLAB_FASHION_MNIST_DIR": f"{tmp_path}/t/fashion-mnist/FashionMNIST/raw",
        "FORGETLAB_WORDNET": f"{tmp_path}/t/nltk_data/corpora/wordnet",
    }
    assert main(["setup", "--target", str(tmp_path / "t")]) == 1
    assert "MISSING" in capsys.readouterr().out
    with pytest.raises(
        DataError, match=r"80 font files missing in FORGETLAB_FONTS_DIR=.*empty \(e\.g\. DejaVuSans\.ttf"
    ):
        fonts.font_files(fonts.CATALOGUE)
    with pytest.raises(
        DataError, match="Fashion-MNIST not found in .*empty.*without root, set FORGETLAB_FASHION_MNIST_DIR"
    ):
        offline._fashion("test")


def test_the_world_built_from_copies_through_the_settings_is_debians(tmp_path, monkeypatch, forgetlab_home, capsys):
    debian_world = {
        name: offline.load_arrays(name) for name in ("upstream", "fontfamily")
    }  # session home, Debian's files

    target = tmp_path / "offline"
    _copy_as_the_commands_leave_them(target)
    monkeypatch.setenv("FORGETLAB_HOME", str(tmp_path / "home"))
    for name in SETTINGS:  # nothing found: setup prints every export line, which the copies then follow
        monkeypatch.setenv(name, str(tmp_path / "home"))
    exports = _exports(setup_report(str(target))[0])
    assert sorted(exports) == sorted(SETTINGS)
    for name, value in exports.items():
        monkeypatch.setenv(name, value)
    lines, missing = setup_report(str(target))
    assert missing == [] and main(["setup", "--target", str(target)]) == 0
    assert "80 of 80 font files in " + str(target / "usr/share/fonts") in "\n".join(lines)
    assert all(path.startswith(str(target)) for _, _, path in fonts.font_files(fonts.CATALOGUE))
    assert offline.fashion_mnist_dir() == target / "fashion-mnist" / "FashionMNIST" / "raw"

    for name, arrays in debian_world.items():
        built = offline.load_arrays(name)
        assert offline.world_dir().parent == tmp_path / "home" and (offline.world_dir() / f"{name}.npz").is_file()
        assert sorted(built) == sorted(arrays) and all(np.array_equal(built[key], arrays[key]) for key in arrays)
    root = wordnet.setup(tmp_path / "home" / "nltk_data")
    assert (root / "data.noun").read_bytes() == (wordnet.WORDNET_DIR / "data.noun").read_bytes()
    assert (
        wordnet.reader(str(tmp_path / "home" / "nltk_data")).synset_from_pos_and_offset("n", 2958343).name()
        == "car.n.01"
    )

    # NLTK's downloader may leave wordnet.zip: FORGETLAB_WORDNET may name it.
    bundle_path = tmp_path / "wordnet.zip"
    with zipfile.ZipFile(bundle_path, "w") as bundle:
        for file in (target / "nltk_data" / "corpora" / "wordnet").iterdir():
            bundle.write(file, f"wordnet/{file.name}")
    monkeypatch.setenv("FORGETLAB_WORDNET", str(bundle_path))
    assert setup_report(str(target))[1] == []
    root = wordnet.setup(tmp_path / "from-zip")
    assert (root / "data.noun").read_bytes() == (wordnet.WORDNET_DIR / "data.noun").read_bytes()
