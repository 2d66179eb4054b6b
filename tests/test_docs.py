"""The documentation stays true to the code and the measurements, and the project speaks of itself only.

- The generated reference pages (``scripts/gen_reference.py``: the CLI from the argparse parser, the
  config keys from the dataclasses) equal a fresh generation.
- No tracked file and no CLI output speaks of how forgetlab was built (the history of its making belongs
  in CHANGELOG.md, by version) or names a folder of one machine.
- The results pages quote the numbers of the files that produced them (``benchmarks/results/``).
- The README is a short guide (under 250 lines) whose local links resolve.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forgetlab import cli

ROOT = Path(__file__).resolve().parents[1]

# How forgetlab was built is no part of it (a tracker's item numbers, numbered work stints, hand-over
# notes), nor are the folders of one machine. Each pattern and example is written (a character class,
# a split string) so that this file's own source matches none of them and is scanned like any other.
SELF_MENTIONS = {
    "a tracker number": re.compile(r"\bissues?[ _-]?#?\d+", re.IGNORECASE),
    "a tracker item named as such": re.compile(r"\bthe [i]ssue\b", re.IGNORECASE),
    "a numbered work stint": re.compile(
        r"\b(?:work )?sessions? \d+\b|\bthis [s]ession\b|\bwork [p]eriod", re.IGNORECASE
    ),
    "a hand-over note": re.compile(r"\bclos[i]ng note", re.IGNORECASE),
    "a path of one machine": re.compile(r"(?<![\w.~$])/(?:work|root|tmp)/|/home/\w+/"),
}


def _self_mentions(text: str) -> list[str]:
    return [
        f"{what}: {match.group(0)!r}" for what, pattern in SELF_MENTIONS.items() for match in pattern.finditer(text)
    ]


def test_self_mention_patterns_catch_what_they_name():
    """The patterns find each kind of mention and leave the project's own words alone."""
    caught = [
        "see issue " + "20",
        "Issue #" + "3",
        "the " + "issue's example",
        "Measured in session " + "7",
        "as quoted in the clos" + "ing note",
        "FORGETLAB_HOME=" + "/" + "tmp/x",
        "cd " + "/" + "work/main",
    ]
    for text in caught:
        assert _self_mentions(text), text
    fine = [
        "pytest's session fixture",
        "a passing session's folder",
        "/usr/share/fonts",
        "~/.cache/forgetlab",
        "$FORGETLAB_HOME/knn-banks/",
        "runs/demo-report",
        "https://github.com/rezaakb/peft-vit",
    ]
    for text in fine:
        assert not _self_mentions(text), text


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_no_tracked_file_speaks_of_how_it_was_built():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = _tracked_text_files()
    assert len(files) > 50  # the listing worked
    found = [
        f"{p.relative_to(ROOT)}:{n}: {m}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        for m in _self_mentions(line)
    ]
    assert not found, "\n".join(found)


def _cli_output(argv: list[str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        cli.main(argv)
    return out.getvalue() + err.getvalue()


def test_no_cli_output_speaks_of_how_it_was_built():
    from forgetlab.presets import PRESETS

    commands = [["--help"], ["presets"], ["presets", "--markdown"], ["config", "--keys"], ["data", "--help"]]
    commands += [
        [name, "--help"]
        for name in ("run", "presets", "pretrain", "show", "sweep", "report", "single-adapter", "anatomy", "config")
    ]
    commands += [["presets", name] for name in PRESETS]
    outputs = {" ".join(argv): _cli_output(argv) for argv in commands}
    assert len(outputs["presets"]) > 1000 and "paper2-lora-r4" in outputs["presets"]  # they really printed
    found = [f"forgetlab {argv}: {m}" for argv, text in outputs.items() for m in _self_mentions(text)]
    assert not found, "\n".join(found)


def test_generated_reference_pages_are_current():
    """docs/reference/cli.md and config.md equal what scripts/gen_reference.py writes from the code now."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_reference
    finally:
        sys.path.pop(0)
    for path, text in gen_reference.fresh_pages().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run 'python scripts/gen_reference.py'"


def test_reference_pages_cover_every_command_and_key():
    from forgetlab import config

    cli_page = (ROOT / "docs/reference/cli.md").read_text(encoding="utf-8")
    for command in (
        "run",
        "presets",
        "data check",
        "pretrain",
        "show",
        "sweep",
        "report",
        "single-adapter",
        "anatomy",
        "config",
    ):
        assert f"## `forgetlab {command}`" in cli_page
    config_page = (ROOT / "docs/reference/config.md").read_text(encoding="utf-8")
    for key, _, _ in config.describe_all(config.resolve()):
        assert f"`{key.split(' ')[0]}`" in config_page, key


def _markdown_rows(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``| first_cell |``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_offline_claims_page_quotes_the_measured_table():
    measured = _markdown_rows((ROOT / "benchmarks/results/offline_claims.md").read_text(encoding="utf-8"), "backbone")
    page = _markdown_rows((ROOT / "docs/results/offline-claims.md").read_text(encoding="utf-8"), "backbone")
    assert len(measured) == 16 and page == measured


def _sweep_rows(folder: str) -> list[dict]:
    with open(ROOT / "benchmarks/results" / folder / "sweep.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _variant(row: dict) -> str:
    return "dora" if row["config.method.dora"] == "True" else row["config.method.scaling"]


def test_lora_variants_page_equals_its_sweep_csv():
    """Every mean ± std (over seeds, ddof 1) of upstream change in points, recomputed from sweep.csv."""
    rows = _sweep_rows("lora-variants")
    page = _markdown_rows((ROOT / "docs/results/lora-variants.md").read_text(encoding="utf-8"), "backbone")
    assert len(page) == 6
    for backbone, variant, *cells in page:
        for rank, cell in zip((1, 4, 16, 64), cells[:4]):
            changes = [
                100 * float(r["upstream_change"])
                for r in rows
                if r["backbone"] == backbone and _variant(r) == variant and r["config.method.rank"] == str(rank)
            ]
            assert len(changes) == 3, (backbone, variant, rank)
            assert cell == f"{np.mean(changes):.1f} ± {np.std(changes, ddof=1):.1f}", (backbone, variant, rank)
        assert int(cells[-1]) == 12


def test_lora_variants_quick_page_equals_its_sweep_csv():
    rows = _sweep_rows("lora-variants-quick")
    page = _markdown_rows((ROOT / "docs/results/lora-variants.md").read_text(encoding="utf-8"), "rank")
    assert len(page) == 4
    for rank, *cells in page:
        for variant, cell in zip(("standard", "rslora", "dora"), cells):
            (row,) = [r for r in rows if r["config.method.rank"] == rank and _variant(r) == variant]
            change, average = 100 * float(row["upstream_change"]), 100 * float(row["average_accuracy"])
            assert cell == f"{change:.2f} ({average:.2f})", (rank, variant)


def test_figures_in_the_docs_are_the_reports_figures():
    copies = {
        "claims_rank_curves.png": "claims-report/figures/rank_curves.png",
        "lora_variants_rank_curves.png": "lora-variants/rank_curves.png",
        "lora_variants_quick_rank_curves.png": "lora-variants-quick/rank_curves.png",
    }
    for copy, original in copies.items():
        assert (ROOT / "docs/assets" / copy).read_bytes() == (ROOT / "benchmarks/results" / original).read_bytes()


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    links = re.findall(r"\]\(([^)#\s]+)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) > 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing
