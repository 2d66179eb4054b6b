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
