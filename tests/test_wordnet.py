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
    for pos, offset in (
        ("noun", 2958343),
        ("verb", 1168486),
        ("adv", 85811),
        ("noun", 1632458),
    ):  # car, eat, quickly, spotted salamander
        with open(root / f"data.{pos}", "rb") as data:
            data.seek(offset)
            fields = data.readline().decode().split()
        found.append((fields[4], lexnames[fields[1]]))
    assert found == [
        ("car", "noun.artifact"),
        ("eat", "verb.consumption"),
        ("quickly", "adv.all"),
        ("spotted_salamander", "noun.animal"),
    ]
    assert wordnet.wnid_names(["n02958343", "n01629819"], str(tmp_path / "nltk_data")) == [
        "car",
        "European fire salamander",
    ]


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


# Paper 1's token similarity (analysis/contextual.py, mode='tokens') of real ImageNet classes, by hand.
# Its code (AlbinSou/lora_cl_analysis, notebooks/samples.ipynb: word_similarity, average_similarity)
# tokenises " ".join(names) with nltk.word_tokenize, takes for each token the largest
# s.wup_similarity(d) over wordnet.synsets(token) x wordnet.synsets(word), NLTK's defaults (a simulated
# root where a synset is not a noun), and averages the tokens scoring above 0. Wu-Palmer is
# 2 d / (l1 + l2 + 2 d): d the depth of the deepest common hypernym (root = 1), l1 and l2 the paths to
# it; each comment gives the best pair, its common hypernym and (d, l1, l2).
TOKEN_SIMILARITIES = {  # class (its wnid; names as torchvision and WordNet spell them): (vs "car", vs "plane")
    "n04285008": (
        ["sports car", "sport car"],
        # sport(s): mutant.n.01 x car.n.02 at whole.n.02 (4, 3, 5); car: car.n.01 itself (12, 0, 0)
        (8 / 16 + 1) / 2,
        # sport(s): mutant.n.01 x plane.n.04 at whole.n.02 (4, 3, 6);
        # car: car.n.02 x airplane.n.01 at vehicle.n.01 (8, 2, 4)
        (8 / 17 + 16 / 22) / 2,
    ),
    "n02690373": (
        ["airliner"],
        16 / 23,  # airliner.n.01 x car.n.02 at vehicle.n.01 (8, 5, 2)
        24 / 25,
    ),  # airliner.n.01 x airplane.n.01 at airplane.n.01 (12, 1, 0)
    "n01632458": (
        ["spotted salamander", "Ambystoma maculatum"],
        # spotted: spot.v.02 x car.n.02 at the simulated root (1, 1, 9); salamander: poker.n.01 x car.n.02
        # at instrumentality.n.03 (6, 3, 3); Ambystoma: ambystoma.n.01 x car.n.02 at entity.n.01 (1, 7, 8);
        # maculatum has no sense and is left out
        (2 / 12 + 12 / 18 + 2 / 17) / 3,
        # spotted: spot.v.04 x plane.v.03 at change_surface.v.01 (2, 1, 2); salamander: poker.n.01 x plane.n.04
        # at implement.n.01 (7, 2, 3); Ambystoma: ambystoma.n.01 x plane.n.02 at abstraction.n.06 (2, 6, 3)
        (4 / 7 + 14 / 19 + 4 / 13) / 3,
    ),
    "n04037443": (
        ["racer", "race car", "racing car"],
        # racer: racer.n.02 x car.n.01 (12, 1, 0); race: raceway.n.01 x car.n.02 at artifact.n.01 (5, 4, 4);
        # racing: only a verb counts, rush.v.01 x car.n.02 at the simulated root (1, 2, 9); car twice
        (24 / 25 + 10 / 18 + 2 / 13 + 1 + 1) / 5,
        # racer: x airplane.n.01 at vehicle.n.01 (8, 5, 4); race: raceway.n.01 x plane.n.04 (5, 4, 5);
        # racing: rush.v.01 x flat.s.01 (plane's adjective) at the simulated root (1, 2, 1); car: (8, 2, 4) twice
        (16 / 25 + 10 / 19 + 2 / 5 + 2 * 16 / 22) / 5,
    ),
    "n04552348": (
        ["warplane", "military plane"],
        # warplane: x car.n.02 at vehicle.n.01 (8, 2, 2); military: only an adjective, military.a.01 x car.n.02
        # at the simulated root (1, 1, 9); plane: airplane.n.01 x car.n.02 at vehicle.n.01 (8, 4, 2)
        (16 / 20 + 2 / 12 + 16 / 22) / 3,
        # warplane: x airplane.n.01 at heavier-than-air_craft.n.01 (11, 1, 1); military.a.01 x flat.s.01 at the
        # simulated root (1, 1, 1); plane: airplane.n.01 itself
        (22 / 24 + 2 / 4 + 1) / 3,
    ),
}


@pytest.mark.parametrize("wnid", TOKEN_SIMILARITIES)
def test_token_similarity_of_imagenet_classes_is_paper1s(wnid):
    from forgetlab.analysis.contextual import class_similarities, token_similarity

    names, to_car, to_plane = TOKEN_SIMILARITIES[wnid]
    assert token_similarity(names, "car") == pytest.approx(to_car, abs=1e-12)
    assert token_similarity(names, "plane") == pytest.approx(to_plane, abs=1e-12)
    # from the wnid: the synset's lemma names are the names paper 1's code read from torchvision
    assert class_similarities("car.n.01", synsets=[wnid], mode="tokens")[0] == pytest.approx(to_car, abs=1e-12)
    assert class_similarities("airplane.n.01", synsets=[wnid], mode="tokens", domain_word="plane")[0] == pytest.approx(
        to_plane, abs=1e-12
    )


def test_tokens_of_other_parts_of_speech_meet_at_the_simulated_root():
    """A verb or adverb against the noun "car" scores 2 / (l1 + l2 + 2) through NLTK's simulated root
    (depth 1), not 0: eat.v.01 is 2 steps below the root, car.n.02 9 (its 8 hypernyms and the root)."""
    from forgetlab.analysis.contextual import token_similarity

    assert token_similarity("eat", "car") == pytest.approx(2 / 13, abs=1e-12)
    assert token_similarity("quickly", "car") == pytest.approx(2 / 12, abs=1e-12)  # quickly.r.01: 1 step
    assert token_similarity("spotted salamander", "car") == pytest.approx((2 / 12 + 12 / 18) / 2, abs=1e-12)
    assert token_similarity("xqzt", "car") == 0.0  # no sense at all: 0, and left out of a class's mean
