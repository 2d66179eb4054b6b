"""WordNet 3.0, read offline through NLTK: from Debian's ``wordnet-base``, or on machines without apt
from ``$FORGETLAB_WORDNET`` (Princeton's ``dict`` folder) or NLTK's own downloaded copy.

NLTK will not read ``/usr/share/wordnet`` in place, and the Debian package (and any copy of its folder)
lacks the ``lexnames`` file that NLTK's reader opens first. :func:`setup` copies the database into
forgetlab's own NLTK data folder and writes ``lexnames`` from :data:`LEXNAMES`, WordNet 3.0's fixed
table of 45 lexicographer files, wherever the source folder lacks it.

ImageNet wnids (``n02958343``) are WordNet 3.0 noun offsets, so a class's synset is exact:
:func:`synset_from_wnid`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

from forgetlab import paths
from forgetlab.errors import DataError
from forgetlab.results import build_lock

WORDNET_DIR = Path("/usr/share/wordnet")
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# WordNet 3.0's lexicographer files, numbered 00..44: the ``lexnames`` file of Princeton's dict folder,
# and the table of the lexnames(5WN) manual page (Debian's /usr/share/man/man5/lexnames.5WN.gz).
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
INSTALL_HINT = (
    "install it with: sudo apt-get install wordnet-base wordnet-sense-index (or run 'make demo'); "
    "without apt, set FORGETLAB_WORDNET=/path/to/WordNet-3.0/dict or run python -m nltk.downloader wordnet "
    "('forgetlab setup' says more)"
)


def lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: 45 lines ``NN<TAB>name<TAB>pos`` (pos 1 noun, 2 verb, 3 adjective,
    4 adverb), as Princeton's dict folder has it and NLTK's reader expects."""
    return "".join(f"{number:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for number, name in enumerate(LEXNAMES))


def _extract_zip(archive: Path, folder: Path) -> None:
    """The files of NLTK's ``wordnet.zip`` (all under ``wordnet/``), flat into ``folder``."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as bundle:
            folder.mkdir(parents=True)
            for member in bundle.infolist():
                name = Path(member.filename).name
                if not member.is_dir() and name and Path(member.filename).parent.name == "wordnet":
                    (folder / name).write_bytes(bundle.read(member))
    except zipfile.BadZipFile as error:
        raise DataError(
            f"{archive} is not a readable zip ({error}); download it again or set FORGETLAB_WORDNET"
        ) from error


def find_source() -> Path:
    """Where WordNet 3.0's database files are: ``$FORGETLAB_WORDNET`` (a ``dict`` folder: Princeton's
    ``WordNet-3.0/dict``, or NLTK's ``corpora/wordnet`` or ``wordnet.zip`` after ``nltk.download('wordnet')``), else
    Debian's ``wordnet-base``, else NLTK's data folders; machines without apt (clusters) use the others."""
    configured = os.environ.get("FORGETLAB_WORDNET")
    if configured:
        path = Path(configured).expanduser()
        if path.suffix == ".zip" and path.is_file():  # NLTK's wordnet.zip, as its downloader may leave it
            return path
        if not (path / "data.noun").exists():
            raise DataError(
                f"FORGETLAB_WORDNET={configured} has no data.noun; point it at WordNet 3.0's dict folder "
                "(or NLTK's corpora/wordnet or wordnet.zip; 'forgetlab setup' says how to get one)"
            )
        return path
    if (WORDNET_DIR / "data.noun").exists():
        return WORDNET_DIR
    try:
        import nltk

        for folder in nltk.data.path:
            corpora = Path(folder) / "corpora"
            if (corpora / "wordnet" / "data.noun").exists():
                return corpora / "wordnet"
            if (corpora / "wordnet.zip").is_file():  # newer NLTK downloads leave it zipped
                return corpora / "wordnet.zip"
    except ImportError:  # pragma: no cover - nltk is a dependency
        pass
    return WORDNET_DIR  # missing: setup() says how to install it


def _holds_wordnet(path: Path) -> bool:
    return (path / "data.noun").exists() or (path.suffix == ".zip" and path.is_file())


def locate() -> tuple[Path | None, str]:
    """Where WordNet 3.0 is, as ``forgetlab setup`` and ``forgetlab data check`` both report it:
    ``(path, detail)``, the source :func:`find_source` finds (``$FORGETLAB_WORDNET``, Debian's
    ``wordnet-base``, NLTK's data folders), else forgetlab's own copy under ``FORGETLAB_HOME`` (which
    :func:`reader` reads, made by :func:`setup`) when its source is gone; ``(None, what was seen)``
    when there is neither, or when ``$FORGETLAB_WORDNET`` names a folder without WordNet."""
    try:
        source = find_source()
    except DataError as error:  # a FORGETLAB_WORDNET that holds no WordNet: said, even if a copy exists
        return None, str(error)
    copy = paths.home() / "nltk_data" / "corpora" / "wordnet"
    copied = (copy / "lexnames").exists() and (copy / "data.noun").exists()
    if _holds_wordnet(source):
        how = "FORGETLAB_WORDNET" if os.environ.get("FORGETLAB_WORDNET") else "found without a setting"
        read = f"; read from forgetlab's copy in {copy}" if copied else ""
        return source, f"WordNet 3.0 in {source} ({how}){read}"
    if copied:
        return copy, f"WordNet 3.0 in forgetlab's copy {copy} (its source is no longer found)"
    return None, f"no data.noun in {source} or NLTK's data folders, and no FORGETLAB_WORDNET"


def setup(data_dir: Path | None = None, source: Path | None = None) -> Path:
    """Build ``<data_dir>/corpora/wordnet`` from WordNet 3.0's files (:func:`find_source`); return that
    folder. A folder without ``lexnames`` (Debian's, or a copy of it) gets :data:`LEXNAMES`. Idempotent."""
    target = (data_dir or paths.home() / "nltk_data") / "corpora" / "wordnet"
    if (target / "lexnames").exists() and (target / "data.noun").exists():
        return target
    # one copier at a time: two processes staging into the same folder would remove each other's files
    with build_lock(target.with_name(".wordnet.lock"), f"copying WordNet 3.0 into {target}"):
        if (target / "lexnames").exists() and (target / "data.noun").exists():
            return target  # copied while this process waited
        return _copy_wordnet(target, find_source() if source is None else source)


def _copy_wordnet(target: Path, source: Path) -> Path:
    staging = target.with_name("wordnet.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if source.suffix == ".zip" and source.is_file():
        _extract_zip(source, staging)
        source = staging
    if not (source / "data.noun").exists():
        raise DataError(f"WordNet 3.0 not found in {source}; {INSTALL_HINT}")
    staging.mkdir(parents=True, exist_ok=True)
    if source != staging:
        for file in source.iterdir():
            if file.is_file():
                shutil.copyfile(file, staging / file.name)
    if not (staging / "lexnames").exists():
        (staging / "lexnames").write_text(lexnames_text())
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


@functools.lru_cache(maxsize=None)
def reader(data_dir: str | None = None):
    """An NLTK ``WordNetCorpusReader`` over the offline copy."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as error:  # pragma: no cover - nltk is a dependency
        raise DataError("the Python package nltk is missing; run 'make demo' or pip install -e .") from error
    root = setup(Path(data_dir) if data_dir else None)
    # NLTK only reads below the folders on nltk.data.path (its path sandbox).
    nltk_data = str(root.parent.parent)
    if nltk_data not in nltk.data.path:
        nltk.data.path.insert(0, nltk_data)
    import warnings

    with warnings.catch_warnings():  # "multilingual functions not available": no OMW here, none needed
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(root), None)


def synset(name: str):
    """``synset('car.n.01')``, with a one-line error for a name WordNet does not have."""
    try:
        return reader().synset(name)
    except Exception as error:  # NLTK raises WordNetError or ValueError
        raise DataError(f"unknown WordNet synset '{name}'; use a name like 'car.n.01'") from error


def synset_from_wnid(wnid: str):
    """The synset of an ImageNet-style wnid: ``n02958343`` -> ``car.n.01``."""
    return reader().synset_from_pos_and_offset("n", _noun_offset(wnid))


def _noun_offset(wnid: str) -> int:
    if not re.fullmatch(r"n\d{8}", wnid):
        raise DataError(f"'{wnid}' is not a wnid; a wnid is 'n' and an 8-digit noun offset")
    return int(wnid[1:])


def wnid_names(wnids: list[str], data_dir: str | None = None) -> list[str]:
    """Each wnid's first lemma, as a class name (``n02958343`` -> ``car``), read straight from
    ``data.noun`` at the wnid's byte offset: the same line :func:`synset_from_wnid` reads, without
    building NLTK's lemma index (about 7 s a process here), so a real ImageNet run starts at once."""
    names = []
    with open(setup(Path(data_dir) if data_dir else None) / "data.noun", "rb") as data:
        for name in wnids:
            data.seek(_noun_offset(name))
            fields = data.readline().decode("utf-8", errors="replace").split()
            # offset, lexicographer file, synset type, word count (hex), then the first word
            if len(fields) < 5 or fields[0] != name[1:] or fields[2] != "n":
                raise DataError(
                    f"'{name}' is not a WordNet 3.0 noun offset; ImageNet's class folders are named by them"
                )
            names.append(fields[4].replace("_", " "))
    return names


def wnid(synset_name: str) -> str:
    """The wnid of a noun synset: ``car.n.01`` -> ``n02958343``."""
    return f"n{synset(synset_name).offset():08d}"


def wup_similarity(a, b) -> float:
    """Wu-Palmer similarity of two synsets (objects or names), in [0, 1]."""
    a = synset(a) if isinstance(a, str) else a
    b = synset(b) if isinstance(b, str) else b
    return float(a.wup_similarity(b) or 0.0)
