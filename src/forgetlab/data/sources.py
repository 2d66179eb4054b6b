"""The offline world's three inputs: where forgetlab looks for each, what it finds, and how to get what
is missing, with apt or without root (``forgetlab setup`` prints it).

============== ================================ ==================================================
input          setting (environment)            default: the Debian packages' install location
============== ================================ ==================================================
fonts          ``FORGETLAB_FONTS_DIR``          ``/usr/share/fonts/...`` (fonts-dejavu-core,
               (searched by file name)          fonts-dejavu-extra, fonts-liberation,
                                                fonts-freefont-ttf, fonts-urw-base35)
Fashion-MNIST  ``FORGETLAB_FASHION_MNIST_DIR``  ``/usr/share/datasets/fashion-mnist``
                                                (dataset-fashion-mnist)
WordNet 3.0    ``FORGETLAB_WORDNET``            ``/usr/share/wordnet`` (wordnet-base,
                                                wordnet-sense-index), else NLTK's data folders
============== ================================ ==================================================

Without root, the same Debian package files can be downloaded (``apt-get download`` needs no root; a
machine without apt takes the ``.deb`` files from packages.debian.org) and unpacked by hand
(``dpkg -x``, or ``ar`` and ``tar``); Fashion-MNIST and WordNet also come through packages forgetlab
already depends on (torchvision's ``FashionMNIST(download=True)``, NLTK's downloader). The world is the
same wherever its files come from; fonts of other versions than Debian 12's render other images.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from forgetlab import wordnet
from forgetlab.data import fonts, offline

DEFAULT_TARGET = "~/forgetlab-offline"


@dataclass(frozen=True)
class Source:
    """One input of the offline world: ``found`` is where it is (``None``: missing), ``detail`` what was
    seen there, ``apt`` the root command and ``without_root`` the shell lines that get it without root."""

    name: str
    setting: str
    found: str | None
    detail: str
    apt: str
    without_root: tuple[str, ...]


def _in(target: str, *parts: str) -> str:
    """A path below the without-root folder, quoted for the shell (:func:`shlex.quote`): a folder name
    with spaces or brackets pastes as one word."""
    return shlex.quote("/".join([target, *parts]))


def _unpack_lines(packages: list[str], target: str) -> list[str]:
    return [
        f"mkdir -p {_in(target, 'debs')} && cd {_in(target, 'debs')}",
        f"apt-get download {' '.join(packages)}    # no root needed; "
        f"without apt: the same .deb files from packages.debian.org",
        f'for deb in *.deb; do dpkg -x "$deb" {_in(target)}; done'
        f'    # without dpkg: ar x "$deb" && tar -xf data.tar.* -C {_in(target)}',
    ]


def fonts_source(target: str = DEFAULT_TARGET) -> Source:
    """The catalogue's font files (:data:`forgetlab.data.fonts.CATALOGUE`): found when every file is."""
    packages = sorted({package for package, _ in fonts.CATALOGUE.values()})
    wanted = [path for _, paths in fonts.CATALOGUE.values() for path in paths]
    located = [fonts.font_path(path) for path in wanted]
    count = sum(path is not None for path in located)
    folder = fonts.fonts_dir()
    where = str(folder) if folder is not None else "Debian's /usr/share/fonts"
    missing = sorted(Path(path).name for path, found in zip(wanted, located) if found is None)
    detail = f"{count} of {len(wanted)} font files in {where}" + (
        f" (missing: {', '.join(missing[:3])}, ...)" if missing else ""
    )
    return Source(
        "fonts",
        fonts.FONTS_DIR_SETTING,
        where if count == len(wanted) else None,
        detail,
        f"sudo apt-get install {' '.join(packages)}",
        (*_unpack_lines(packages, target), f"export {fonts.FONTS_DIR_SETTING}={_in(target, 'usr/share/fonts')}"),
    )


def fashion_mnist_source(target: str = DEFAULT_TARGET) -> Source:
    """Fashion-MNIST's four files (:data:`forgetlab.data.offline.FASHION_MNIST_FILES`)."""
    folder = offline.fashion_mnist_dir()
    present = [name for name in offline.FASHION_MNIST_FILES if (folder / name).is_file()]
    complete = len(present) == len(offline.FASHION_MNIST_FILES)
    return Source(
        "Fashion-MNIST",
        offline.FASHION_MNIST_SETTING,
        str(folder) if complete else None,
        f"{len(present)} of {len(offline.FASHION_MNIST_FILES)} files in {folder}",
        "sudo apt-get install dataset-fashion-mnist",
        (
            "python -c "
            + shlex.quote(
                f"import torchvision; torchvision.datasets.FashionMNIST({target + '/fashion-mnist'!r}, download=True)"
            ),
            f"export {offline.FASHION_MNIST_SETTING}={_in(target, 'fashion-mnist/FashionMNIST/raw')}"
            f"    # or the Debian package unpacked as above: {_in(target + str(offline.FASHION_MNIST_DEBIAN_DIR))}",
        ),
    )


def wordnet_source(target: str = DEFAULT_TARGET) -> Source:
    """WordNet 3.0's database, where :func:`forgetlab.wordnet.locate` finds it (as ``forgetlab data
    check`` reports it)."""
    found, detail = wordnet.locate()
    return Source(
        "WordNet",
        "FORGETLAB_WORDNET",
        str(found) if found else None,
        detail,
        "sudo apt-get install wordnet-base wordnet-sense-index",
        (
            f"python -m nltk.downloader -d {_in(target, 'nltk_data')} wordnet",
            f"export FORGETLAB_WORDNET={_in(target, 'nltk_data/corpora/wordnet')}    "
            f"# or .../wordnet.zip where NLTK left it zipped",
        ),
    )


def offline_sources(target: str = DEFAULT_TARGET) -> list[Source]:
    """Fonts, Fashion-MNIST and WordNet, in that order; ``target`` is the folder the without-root
    commands unpack into."""
    return [fonts_source(target), fashion_mnist_source(target), wordnet_source(target)]


def setup_report(target: str = DEFAULT_TARGET) -> tuple[list[str], list[str]]:
    """The lines ``forgetlab setup`` prints and the names of the missing inputs: for each input its
    setting, where it was found (or what was seen), and, when missing, the command with apt and the
    commands without root."""
    sources = offline_sources(str(Path(target).expanduser()))
    lines = ["The offline world's inputs (each setting is an environment variable):"]
    for source in sources:
        state = "ok" if source.found else "MISSING"
        lines.append(f"  {source.name:14s} {state:8s} {source.detail}    [{source.setting}]")
    missing = [source for source in sources if not source.found]
    for source in missing:
        lines.append(f"\n{source.name}: with root: {source.apt}")
        lines.append(f"{source.name}: without root:")
        lines.extend(f"    {line}" for line in source.without_root)
    if missing:
        lines.append(
            "\nPut the export lines in your shell profile (or the job script), then run 'forgetlab setup' again."
        )
    else:
        lines.append("\nEverything the offline world needs is here: 'forgetlab pretrain', then 'forgetlab run'.")
    return lines, [source.name for source in missing]
