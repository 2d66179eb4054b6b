"""Offline WordNet 3.0 through NLTK, set up by forgetlab from Debian's files."""

from __future__ import annotations

import pytest

from forgetlab import wordnet
from forgetlab.errors import DataError


def test_setup_from_a_clean_folder(tmp_path):
    root = wordnet.setup(tmp_path / "nltk_data")
    assert root == tmp_path / "nltk_data" / "corpora" / "wordnet"
    lexnames = (root / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[18] == "18\tnoun.person\t1"
    reader = wordnet.reader(str(tmp_path / "nltk_data"))
    assert reader.synset("car.n.01").lexname() == "noun.artifact"
    assert not (root.parent / "wordnet.partial").exists()


def test_reference_values():
    assert wordnet.wup_similarity("car.n.01", "sports_car.n.01") == pytest.approx(0.96)
    assert wordnet.synset_from_wnid("n02958343").name() == "car.n.01"
    assert wordnet.wnid("car.n.01") == "n02958343"


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        wordnet.setup(tmp_path / "x", source=tmp_path / "missing")
    with pytest.raises(DataError, match="unknown WordNet synset"):
        wordnet.synset("carr.n.01")
    with pytest.raises(DataError, match="not a wnid"):
        wordnet.synset_from_wnid("02958343")


def test_wnid_names_read_data_noun_as_nltk_does():
    """ImageNet's class names without NLTK's index: the first lemma at each wnid's byte offset, the same
    as NLTK's synset for every 50th noun synset of WordNet 3.0, and a one-line error for a bad wnid."""
    import itertools

    synsets = list(itertools.islice(wordnet.reader().all_synsets("n"), 0, None, 50))
    wnids = [f"n{s.offset():08d}" for s in synsets]
    assert len(wnids) > 1600
    assert wordnet.wnid_names(wnids) == [s.lemma_names()[0].replace("_", " ") for s in synsets]
    assert wordnet.wnid_names(["n02958343", "n03000134"]) == ["car", "chainlink fence"]
    with pytest.raises(DataError, match="not a wnid"):
        wordnet.wnid_names(["car.n.01"])
    with pytest.raises(DataError, match="not a WordNet 3.0 noun offset"):
        wordnet.wnid_names(["n02958344"])  # inside car's line, not at its start


def _princeton_dict(folder):
    """WordNet 3.0's ``dict`` folder as Princeton ships it: Debian's files plus ``lexnames``."""
    import shutil

    folder.mkdir(parents=True)
    for file in wordnet.WORDNET_DIR.iterdir():
        if file.is_file():
            shutil.copyfile(file, folder / file.name)
    (folder / "lexnames").write_text(wordnet.lexnames_text())
    return folder


def test_lexnames_are_debians_manual_page_table():
    """The shipped table equals the one in wordnet-base's lexnames(5WN) manual page (where installed)."""
    import gzip
    import re
    from pathlib import Path

    manpage = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not manpage.exists():
        pytest.skip("wordnet-base's manual page is not installed")
    table = re.findall(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)\s", gzip.open(manpage, "rt").read(), flags=re.MULTILINE)
    assert table == [(f"{number:02d}", name) for number, name in enumerate(wordnet.LEXNAMES)] and len(table) == 45
    assert wordnet.lexnames_text().splitlines()[44] == "44\tadj.ppl\t3" and wordnet.lexnames_text().count("\t2\n") == 15


def test_a_copy_of_debians_folder_needs_no_manual_page(tmp_path, monkeypatch):
    """$FORGETLAB_WORDNET at a copy of Debian's /usr/share/wordnet (no lexnames file), on a machine with
    neither Debian's folder nor its manual page: the lexnames come from forgetlab's table."""
    import shutil

    copy = tmp_path / "wordnet-copy"
    shutil.copytree(wordnet.WORDNET_DIR, copy)
    assert not (copy / "lexnames").exists()
    monkeypatch.setenv("FORGETLAB_WORDNET", str(copy))
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "no-debian")
    root = wordnet.setup(tmp_path / "nltk_data")
    assert (root / "lexnames").read_text() == wordnet.lexnames_text()
    # each synset's lexicographer file number (data.*'s second field) names its file through the table;
    # NLTK's reader reads the same lines (test_setup_from_a_clean_folder), but building it takes 7-17 s
    lexnames = dict(line.split("\t")[:2] for line in (root / "lexnames").read_text().splitlines())
    found = []
    for pos, offset in (("noun", 2958343), ("verb", 1168486), ("adv", 85811), ("noun", 1632458)):  # car, eat, quickly, spotted salamander
        with open(root / f"data.{pos}", "rb") as data:
            data.seek(offset)
            fields = data.readline().decode().split()
        found.append((fields[4], lexnames[fields[1]]))
    assert found == [("car", "noun.artifact"), ("eat", "verb.consumption"), ("quickly", "adv.all"), ("spotted_salamander", "noun.animal")]
    assert wordnet.wnid_names(["n02958343", "n01629819"], str(tmp_path / "nltk_data")) == ["car", "European fire salamander"]


def test_wordnet_without_debian_packages(tmp_path, monkeypatch):
    """On a machine without apt (a cluster): $FORGETLAB_WORDNET names a dict folder, or NLTK's data
    folder holds corpora/wordnet.zip as nltk.download leaves it; neither needs Debian's manual page."""
    import zipfile

    import nltk

    source = _princeton_dict(tmp_path / "WordNet-3.0" / "dict")
    monkeypatch.setenv("FORGETLAB_WORDNET", str(source))
    root = wordnet.setup(tmp_path / "from-env")
    assert (root / "lexnames").read_bytes() == (source / "lexnames").read_bytes()
    assert wordnet.reader(str(tmp_path / "from-env")).synset_from_pos_and_offset("n", 2958343).name() == "car.n.01"
    assert wordnet.wnid_names(["n02958343"], str(tmp_path / "from-env")) == ["car"]

    monkeypatch.delenv("FORGETLAB_WORDNET")
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "no-debian")
    nltk_home = tmp_path / "nltk_home"
    (nltk_home / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(nltk_home / "corpora" / "wordnet.zip", "w") as bundle:
        for file in source.iterdir():
            bundle.write(file, f"wordnet/{file.name}")
    monkeypatch.setattr(nltk.data, "path", [str(nltk_home)])
    root = wordnet.setup(tmp_path / "from-zip")
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in source.iterdir())
    assert wordnet.wnid_names(["n02958343", "n03000134"], str(tmp_path / "from-zip")) == ["car", "chainlink fence"]

    (nltk_home / "corpora" / "wordnet.zip").unlink()
    with pytest.raises(DataError, match="apt-get install wordnet-base.*FORGETLAB_WORDNET=/path/to/WordNet-3.0/dict"):
        wordnet.setup(tmp_path / "nowhere")
    monkeypatch.setenv("FORGETLAB_WORDNET", str(tmp_path))
    with pytest.raises(DataError, match="has no data.noun"):
        wordnet.setup(tmp_path / "nowhere")
