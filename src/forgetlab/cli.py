"""The ``forgetlab`` command. It parses arguments and calls one library function per command.

Errors the user can fix (:class:`forgetlab.errors.ForgetlabError`) print one line and exit with 2.

:func:`build_parser` adds one subcommand per ``_add_<command>`` function; each subcommand's ``cmd_<command>``
imports the library it needs when it runs (so ``--help`` stays fast). This is the top floor: only
``forgetlab.__main__`` imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from forgetlab.errors import FULL_DISK, DiskFullError, ForgetlabError, command

EXIT_USER_ERROR = 2


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    config_path, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config_path is None:
            config_path = item
        else:
            raise ForgetlabError(f"'{item}': give one config file, then key=value overrides")
    return config_path, overrides


def cmd_run(args) -> int:
    from forgetlab import api

    from forgetlab.summary import metrics_line

    result = api.run(_resolve(args), log=_log(args))
    print(result.accuracy_matrix.format_table())
    print(metrics_line(result.accuracy_matrix))
    print(f"results: {result.path}")
    return 0


def _resolve(args):
    """The run config of ``run``/``config``: a preset or a YAML file (or the default), then overrides."""
    from forgetlab import config as config_module

    config_path, overrides = _split_config_and_overrides(args.items)
    if getattr(args, "preset", None):
        from forgetlab.presets import preset_layer

        if config_path:
            raise ForgetlabError("give either --preset or a config file, not both (add key=value overrides instead)")
        return config_module.resolve_layers([preset_layer(args.preset), config_module.override_layer(overrides)])
    return config_module.load(config_path, overrides)


def cmd_presets(args) -> int:
    from forgetlab.presets import PRESETS, markdown, preset_tree

    if args.markdown:
        print(markdown())
        return 0
    if args.name:
        preset_tree(args.name)  # a one-line error for an unknown name
        preset = PRESETS[args.name]
        print(f"{preset.name}: {preset.reproduces}\n    command: {preset.command}\n    cost:    {preset.expected_time}")
        if preset.notes:
            print(f"    note:    {preset.notes}")
        rows = preset.table()
        key_width, value_width = max(len(r[0]) for r in rows), min(40, max(len(r[1]) for r in rows))
        print(f"\n{'key'.ljust(key_width)}  {'value'.ljust(value_width)}  source")
        for key, value, source in rows:
            print(f"{key.ljust(key_width)}  {value.ljust(value_width)}  {source}")
        return 0
    for preset in PRESETS.values():
        print(
            f"{preset.name}\n    reproduces: {preset.reproduces}\n    command:    "
            f"{preset.command}\n    cost:       {preset.expected_time}"
        )
        if preset.notes:
            print(f"    note:       {preset.notes}")
    print("\n'forgetlab presets NAME' lists a preset's settings with the source of each.")
    return 0


def cmd_data_check(args) -> int:
    from forgetlab import data_check as check

    overrides = [f"data.root={args.root}"] if args.root else []
    config_path, items = _split_config_and_overrides(args.items)
    preset = args.preset
    if config_path and not preset and not Path(config_path).exists():
        from forgetlab.presets import PRESETS

        preset, config_path = (config_path, None) if config_path in PRESETS else (None, config_path)
    if args.paper and (preset or config_path or items):
        raise ForgetlabError("give --for paper1|paper2 alone (with --root), or a preset or config with overrides")
    root, given = args.root, bool(args.paper or preset or config_path or items)
    if args.paper:
        findings, checked_for = check.paper_findings(args.paper, overrides), f"every {args.paper} preset"
    elif given:
        args.items, args.preset = [*([config_path] if config_path else []), *items, *overrides], preset
        config = _resolve(args)
        findings, root = check.config_findings(config), config.data.root
        checked_for = f"preset {preset}" if preset else f"config {config_path}" if config_path else "the default config"
        checked_for += f" with {' '.join(items)}" if items else ""
    else:
        findings, checked_for = (
            check.every_dataset_findings(args.root),
            "every dataset (no config given: only an invalid one fails)",
        )
    print("\n".join(check.report(findings, _data_root(root), checked_for)))
    return check.exit_code(findings, needed=given or args.strict)


def _data_root(root: str | None) -> str | None:
    """The real datasets' root as a run reads it (:func:`forgetlab.data.files.data_root`: ``root``, else
    ``$FORGETLAB_DATA``, ``~`` expanded); None when neither is set."""
    from types import SimpleNamespace

    from forgetlab.data.files import data_root

    try:
        return str(data_root(SimpleNamespace(root=root)))
    except ForgetlabError:
        return None


def cmd_setup(args) -> int:
    from forgetlab.data.sources import setup_report

    lines, missing = setup_report(args.target)
    print("\n".join(lines))
    return 1 if missing else 0


def cmd_pretrain(args) -> int:
    from forgetlab.models.offline import OFFLINE_BACKBONES
    from forgetlab.models.backbones import offline_backbone_dir
    from forgetlab.pretrain import pretrain, pretrain_once

    names = OFFLINE_BACKBONES if args.backbone == "all" else (args.backbone,)
    for name in names:
        folder = offline_backbone_dir(name)
        if (folder / "model.safetensors").exists() and not args.force:
            print(f"{name}: already built in {folder} (use --force to rebuild)")
        elif args.out:
            pretrain(name, out_dir=Path(args.out) / name)
        elif not pretrain_once(name, force=args.force):  # another process built it while this one waited
            print(f"{name}: built in {folder} by the process this one waited for")
    return 0


def cmd_show(args) -> int:
    from forgetlab.provenance import history_line, read_environment
    from forgetlab.results import RunFolder

    from forgetlab.summary import cells_table, chance_line, metrics_line
    from forgetlab.sweep import SWEEP_FILE, folder_status

    folder = RunFolder(args.run_dir)
    if not folder.path.is_dir():
        raise ForgetlabError(f"{folder.path} does not exist; give a run folder or a sweep folder")
    if not folder.progress.exists():
        rows = folder_status(folder.path) if not folder.config.exists() else []
        if not rows and not (folder.path / SWEEP_FILE).exists():
            raise ForgetlabError(
                f"{folder.path} holds no committed result (no progress.json) and no sweep's cells; "
                "give a folder that 'forgetlab run' or 'forgetlab sweep' printed"
            )
        if rows:
            print(f"{folder.path}: sweep of {len(rows)} cells")
            print(cells_table(folder.path, rows))
        else:
            print(f"{folder.path}: sweep with no cell started yet")
        return 0
    matrix = folder.read_matrix()
    print(f"{folder.path}: {len(matrix.values) - 1}/{matrix.num_tasks} tasks done")
    print(matrix.format_table())
    print(metrics_line(matrix))
    print(chance_line(folder))
    parts = history_line(read_environment(folder.environment), len(matrix.values) - 1)
    if parts:  # phases ran under different code or packages
        print(parts)
    for record in folder.read_tasks():
        print(
            f"  {record['task']}: {record['trainable_backbone_parameters']:,} trainable backbone parameters "
            f"({100 * record['trainable_fraction_of_backbone']:.3f}%), {record['steps']} steps, "
            f"{record['images_per_second']:.0f} img/s"
            + (
                (
                    f" (steady {record['steady_images_per_second']:.0f} "
                    f"img/s after {record['warmup_seconds']:.1f}s warm-up)"
                )
                if record.get("steady_images_per_second") is not None
                else ""
            )
        )
    return 0


def cmd_sweep(args) -> int:
    from forgetlab.summary import cells_table
    from forgetlab.sweep import (
        different_sweep_message,
        load_sweep,
        make_backend,
        run_sweep,
        stored_differences,
        sweep_status,
    )

    sweep = load_sweep(args.sweep_file, args.overrides)
    if args.status:
        differences = stored_differences(sweep)
        if differences:  # the cells below may hold the old sweep's runs: say so before listing them
            print(
                f"note: {different_sweep_message(sweep, differences)}; 'forgetlab sweep' refuses that folder, "
                f"and these states are of the runs it holds"
            )
        rows = sweep_status(sweep)
        print(cells_table(sweep.folder, rows))
        counts = {state: sum(1 for _, s, _ in rows if s == state) for state in dict.fromkeys(s for _, s, _ in rows)}
        print(f"sweep {sweep.name}: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        return 0
    jobs = args.jobs if args.jobs == "auto" else _positive_int(args.jobs, "--jobs", auto=True)
    # --quiet silences the cells' own logs; the sweep still says which cell finished.
    # the backend refuses bad options before the sweep writes anything
    backend = make_backend(sweep, jobs, args.backend, args.address, args.gpus_per_cell, args.retries)
    status = run_sweep(sweep, backend, quiet=args.quiet, log=lambda message: print(f"forgetlab: {message}", flush=True))
    counts = {state: sum(v == state for v in status.values()) for state in ("ran", "skipped", "failed")}
    print(cells_table(sweep.folder, sweep_status(sweep)))
    print(
        f"sweep {sweep.name}: {len(sweep.cells)} cells: {counts['ran']} ran "
        f"now, {counts['skipped']} already done, {counts['failed']} failed"
    )
    if counts["failed"]:
        from forgetlab.sweep import read_status

        for name, record in read_status(sweep).items():
            if status.get(name) == "failed":
                print(f"  failed: {name}: {record.get('message', '')}")
    print(f"results: {sweep.folder} (table: {sweep.folder / 'sweep.csv'})")
    return 1 if counts["failed"] else 0


def _positive_int(value: str, option: str, *, auto: bool = False) -> int:
    """``value`` as a whole number of at least 1; a one-line error naming ``option`` otherwise (which
    mentions ``auto`` only where the option takes it)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        also = " (or auto)" if auto else ""
        raise ForgetlabError(f"{option} must be a whole number of at least 1{also}, got {value!r}")
    return number


def cmd_report(args) -> int:
    from forgetlab import api

    if args.permutations < 1:
        raise ForgetlabError("--permutations must be at least 1")
    out = Path(args.out) if args.out else (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    if out.exists() and not out.is_dir():
        raise ForgetlabError(f"--out {out} is a file; give a folder for the report (it is created if missing)")
    api.report(
        args.paths,
        out,
        permutations=args.permutations,
        after=args.after,
        similarity=args.similarity,
        figure_runs=args.figure_runs,
        log=_log(args),
    )
    return 0


def cmd_single_adapter(args) -> int:
    from forgetlab.single_adapter import single_adapter_predictions

    written = single_adapter_predictions(args.run_dir, device=args.device, log=_log(args))
    print(
        f"{len(written)} single-adapter prediction files written (existing ones kept); "
        f"{command('report', args.run_dir, '--after', 'single')} uses them"
    )
    return 0


def cmd_explain(args) -> int:
    from forgetlab.explanation import explain

    images = None if args.images is None else _positive_int(args.images, "--images")
    tables = explain(args.run_dir, parts=args.parts, images=images, unit=args.unit, device=args.device, log=_log(args))
    print(
        f"{', '.join(f'{name}.csv ({len(table)} rows)' for name, table in tables.items())} "
        f"in {Path(args.run_dir) / 'explain'}; {command('report', args.run_dir)} shows them"
    )
    return 0


def cmd_config(args) -> int:
    from forgetlab import config as config_module

    config = _resolve(args)
    if args.keys:
        for key, help_text, value in config_module.describe_all(config):
            print(f"{key} = {value!r}\n    {help_text}")
    else:
        print(config_module.dump(config), end="")
    return 0


def cmd_anatomy(args) -> int:
    from forgetlab.method_anatomy import anatomy

    print(anatomy(_resolve(args)).format())
    return 0


def _log(args):
    if getattr(args, "quiet", False):
        return lambda message: None
    return lambda message: print(f"forgetlab: {message}", flush=True)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("forgetlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are the house's one line naming the problem and where help
    is (``forgetlab run: unrecognized arguments: --nope (see forgetlab run --help)``), exit code 2,
    instead of the usage block and the error. Subcommands' parsers are of the same class
    (``add_subparsers`` makes them with the parser's own class)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``forgetlab`` parser: one subcommand per ``_add_*`` function below, in the order ``--help`` lists them."""
    parser = OneLineParser(
        prog="forgetlab",
        description="Measure what pretrained vision models forget under incremental (low-rank) fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"forgetlab {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_setup(commands)
    _add_run(commands)
    _add_presets(commands)
    _add_data(commands)
    _add_pretrain(commands)
    _add_show(commands)
    _add_sweep(commands)
    _add_report(commands)
    _add_single_adapter(commands)
    _add_explain(commands)
    _add_anatomy(commands)
    _add_config(commands)
    return parser


def _add_setup(commands: argparse._SubParsersAction) -> None:
    """``forgetlab setup``: where the offline world's inputs are, and how to get the missing ones."""
    setup = commands.add_parser(
        "setup",
        help="say where the offline world's fonts, Fashion-MNIST and WordNet are, and how to get what is missing",
        description="List the offline world's inputs (fonts, Fashion-MNIST, WordNet 3.0): the setting that points at "
        "each (FORGETLAB_FONTS_DIR, FORGETLAB_FASHION_MNIST_DIR, FORGETLAB_WORDNET), where it was found, and for a "
        "missing one the apt command and the commands that get it without root. Exits with 1 when one is missing.",
    )
    setup.add_argument(
        "--target",
        default="~/forgetlab-offline",
        metavar="DIR",
        help="the folder the printed without-root commands download and unpack into (default: %(default)s)",
    )
    setup.set_defaults(func=cmd_setup)


def _add_run(commands: argparse._SubParsersAction) -> None:
    """``forgetlab run``: run (or resume) a task sequence."""
    run = commands.add_parser(
        "run",
        help="run (or resume) a task sequence",
        description="Run a task sequence from a YAML config (default: the built-in offline config) with "
        "key=value overrides, e.g. 'forgetlab run method.rank=16 backbone.name=offline_resnet'. "
        "Running the same command again resumes after the last finished task.",
    )
    run.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help="a config file and/or overrides")
    run.add_argument("--quiet", action="store_true", help="print only the final table")
    run.add_argument("--preset", help="start from a named preset ('forgetlab presets' lists them)")
    run.set_defaults(func=cmd_run)


def _add_presets(commands: argparse._SubParsersAction) -> None:
    """``forgetlab presets``: list the presets, or print one."""
    presets = commands.add_parser(
        "presets",
        help="list the papers' presets",
        description="List the presets: what each reproduces, its command and cost; "
        "with a NAME, its settings and the source of each (the paper's file and line, or forgetlab's choice and why).",
    )
    presets.add_argument("name", nargs="?", metavar="NAME", help="one preset: print its settings with their sources")
    presets.add_argument("--markdown", action="store_true", help="print every preset as Markdown (docs/PRESETS.md)")
    presets.set_defaults(func=cmd_presets)


def _add_data(commands: argparse._SubParsersAction) -> None:
    """``forgetlab data check``: the datasets' state."""
    data = commands.add_parser("data", help="inspect the datasets", description="Dataset tools.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = data_commands.add_parser(
        "check",
        help=(
            "list every input a config, preset or paper needs (or every "
            "dataset), what was found, and how to get what is missing"
        ),
        description=(
            "List every input a run needs, in one pass: datasets and splits as a run loads them, ImageNet's "
            "train/ where the k-NN bank reads it, weights and WordNet; where each belongs and how to get "
            "what is missing. Exit code 2 when something the given config, preset or paper needs is missing "
            "or invalid; without one, when a dataset is invalid (or, with --strict, missing)."
        ),
    )
    check.add_argument(
        "items",
        nargs="*",
        metavar="PRESET | CONFIG.yaml | key=value",
        help="a preset name or a config file, and/or overrides",
    )
    check.add_argument("--preset", help="check what this preset needs ('forgetlab presets' lists them)")
    check.add_argument(
        "--for", dest="paper", choices=["paper1", "paper2"], help="check what every preset of one paper needs"
    )
    check.add_argument("--root", help="the real datasets' folder (default: data.root, else $FORGETLAB_DATA)")
    check.add_argument(
        "--strict", action="store_true", help="without a config: exit with 2 when any dataset is missing too"
    )
    check.set_defaults(func=cmd_data_check)


def _add_pretrain(commands: argparse._SubParsersAction) -> None:
    """``forgetlab pretrain``: build the offline backbones."""
    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain the offline backbones on the offline upstream task",
        description="Pretrain offline_vit and/or offline_resnet on the offline upstream task, "
        "deterministically, into the cache ($FORGETLAB_HOME/backbones).",
    )
    pretrain.add_argument("--backbone", choices=["all", "offline_vit", "offline_resnet"], default="all")
    pretrain.add_argument("--force", action="store_true", help="rebuild even if already in the cache")
    pretrain.add_argument("--out", help="write to OUT/<backbone> instead of the cache")
    pretrain.set_defaults(func=cmd_pretrain)


def _add_show(commands: argparse._SubParsersAction) -> None:
    """``forgetlab show``: a run's matrix and metrics, or a sweep's cells."""
    show = commands.add_parser(
        "show",
        help="print a run's accuracy matrix and metrics, or a sweep's cells",
        description="Print a run's accuracy matrix with its average accuracy, forgetting, BWT and upstream "
        "change; for a sweep's folder, every cell's state and those metrics.",
    )
    show.add_argument("run_dir", metavar="RUN_DIR | SWEEP_DIR")
    show.set_defaults(func=cmd_show)


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    """``forgetlab sweep``: run a sweep file's grid."""
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of runs from a sweep file",
        description="Run every cell of a sweep file's grid as an ordinary run folder under the sweep's folder. "
        "Finished cells are skipped, so running the same command again resumes an interrupted sweep.",
    )
    sweep.add_argument("sweep_file", metavar="SWEEP.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the sweep's base config")
    sweep.add_argument(
        "--jobs",
        default="1",
        help="cells run at once: a number of local processes, or 'auto' (one per visible GPU; "
        "1 on a CPU machine); default 1, in this process",
    )
    sweep.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        help="GPUs each cell gets: 1 (default), a whole number, or a fraction such as 0.5 (two small cells per GPU)",
    )
    sweep.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="where cells run: this machine, or a Ray cluster"
    )
    sweep.add_argument(
        "--address",
        help="with --backend ray: the cluster to join ('auto' finds a running one); none starts a local Ray",
    )
    sweep.add_argument(
        "--retries", type=int, default=2, help="times a cell whose worker died is run again (it resumes); default 2"
    )
    sweep.add_argument(
        "--status", action="store_true", help="print every cell's state and progress from the folder, run nothing"
    )
    sweep.add_argument("--quiet", action="store_true", help="print only the summary")
    sweep.set_defaults(func=cmd_sweep)


def _add_report(commands: argparse._SubParsersAction) -> None:
    """``forgetlab report``: the HTML and Markdown report."""
    report = commands.add_parser(
        "report",
        help="write the HTML report and Markdown summary of runs and sweeps",
        description="Turn run folders, sweep folders or folders of them into report.html (self-contained), "
        "report.md and figures/*.png|svg: forgetting metrics, accuracy against LoRA rank, the most forgotten "
        "upstream classes and the contextual-forgetting test. Its headings and captions name the --after and "
        "--similarity mode, and it ends with a glossary of every metric and its sign.",
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep folders")
    report.add_argument("--out", help="output folder (default: PATH/report for one path, else ./report)")
    report.add_argument(
        "--permutations", type=int, default=10_000, help="permutations of the contextual-forgetting test"
    )
    report.add_argument(
        "--after",
        choices=["sequence", "single"],
        default="sequence",
        help="contextual forgetting after each phase of the sequence, or after the pretrained model plus only that "
        "phase's adapter (paper 1's figures 3-5; needs 'forgetlab single-adapter RUN' first)",
    )
    report.add_argument(
        "--similarity",
        choices=["synset", "tokens"],
        default="synset",
        help=(
            "class-to-domain similarity: the class's WordNet synset "
            "(exact), or paper 1's token matching of the class names"
        ),
    )
    report.add_argument(
        "--figure-runs",
        default=None,
        metavar="highest-rank|per-method|all|LABEL,...",
        help="which runs get the per-run figures (forgotten classes, similarity, accuracy matrix): 'highest-rank' "
        "(default: per backbone the highest LoRA rank, as paper 1; matrices: the first 12 runs), 'per-method' "
        "(one seed per row of the methods table), 'all', or run labels separated by commas; the report says "
        "which runs it drew and why",
    )
    report.add_argument("--quiet", action="store_true")
    report.set_defaults(func=cmd_report)


def _add_single_adapter(commands: argparse._SubParsersAction) -> None:
    """``forgetlab single-adapter``: score the upstream task with one task's adapter."""
    single = commands.add_parser(
        "single-adapter",
        help=(
            "score the upstream task with the pretrained backbone plus "
            "only one task's stored adapter (paper 1, figures 3-5)"
        ),
        description=(
            "For every finished phase of a LoRA run: the pretrained backbone plus only "
            "that phase's stored adapter, merged, scored on the upstream test set; "
            "predictions go to predictions/upstream_single_<i>.npz. Nothing is retrained."
        ),
    )
    single.add_argument("run_dir", metavar="RUN_DIR")
    single.add_argument("--device", default="auto", help="auto, cpu or cuda")
    single.add_argument("--quiet", action="store_true")
    single.set_defaults(func=cmd_single_adapter)


def _add_explain(commands: argparse._SubParsersAction) -> None:
    """``forgetlab explain``: where in the weights a run's upstream loss happens."""
    explain = commands.add_parser(
        "explain",
        help=(
            "where forgetting happens in the weights: per-block attribution "
            "of the upstream loss and the spectra of every update"
        ),
        description=(
            "For every finished phase of a LoRA run, rebuilt from its stored adapters, or of a run of another "
            "method that stored its updates (save.updates=true): the upstream "
            "accuracy with each unit's update reverted and with only that unit's update applied "
            "(explain/attribution.csv), and the spectra of every update (explain/spectra.csv, "
            "overlap.csv, singular_values.csv). Resumable; docs/explain.md gives every column."
        ),
    )
    explain.add_argument("run_dir", metavar="RUN_DIR")
    explain.add_argument(
        "--parts",
        default="attribution,spectra",
        help="comma-separated: attribution, spectra, drift (the linear CKA per unit against the pretrained "
        "features, rebuilt from the adapters or the stored updates; default: attribution,spectra)",
    )
    explain.add_argument(
        "--images",
        default=None,
        help="score a class-balanced subset of this many upstream test images (default: all the run scored)",
    )
    explain.add_argument(
        "--unit",
        default="block",
        choices=["block", "module"],
        help="attribute to blocks (default) or to single adapted modules",
    )
    explain.add_argument("--device", default="auto", help="auto, cpu or cuda")
    explain.add_argument("--quiet", action="store_true")
    explain.set_defaults(func=cmd_explain)


def _add_anatomy(commands: argparse._SubParsersAction) -> None:
    """``forgetlab anatomy``: what every method would train."""
    anatomy = commands.add_parser(
        "anatomy",
        help="what every method would train on a backbone (random weights; nothing is run)",
        description=(
            "Build the configured backbone with random weights and print its family, LoRA's targets, and for "
            "every method the trainable backbone parameters and their share, or why the method does not apply, "
            "e.g. 'forgetlab anatomy backbone.name=swin_tiny_patch4_window7_224 method.name=lora method.rank=8'."
        ),
    )
    anatomy.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help="a config file and/or overrides")
    anatomy.add_argument("--preset", help="start from a named preset")
    anatomy.set_defaults(func=cmd_anatomy)


def _add_config(commands: argparse._SubParsersAction) -> None:
    """``forgetlab config``: print the resolved config."""
    config = commands.add_parser(
        "config",
        help="print the resolved config",
        description=(
            "Print the resolved config (defaults, a config file, overrides) as YAML, or every key with its help."
        ),
    )
    config.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    config.add_argument("--keys", action="store_true", help="list every key with its help text")
    config.add_argument("--preset", help="start from a named preset")
    config.set_defaults(func=cmd_config)


def _parse(parser: argparse.ArgumentParser, argv):
    """Parse, letting ``key=value`` overrides follow options too (``run a=1 --quiet b=2``)."""
    args, extra = parser.parse_known_args(argv)
    listed = "items" if hasattr(args, "items") else "overrides" if hasattr(args, "overrides") else None
    if extra and listed and all("=" in item and not item.startswith("-") for item in extra):
        setattr(args, listed, [*getattr(args, listed), *extra])
    elif extra:
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)command's own parser (``forgetlab data check``'s for ``data check``), so that an error
    names the command it is about and the ``--help`` that lists its options."""
    for dest in ("command", "data_command"):
        chosen = getattr(args, dest, None)
        actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if chosen is None or not actions or chosen not in actions[0].choices:
            break
        parser = actions[0].choices[chosen]
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping like Ctrl-C (exit 143, 128 + SIGTERM's number, as a shell reports it)."""


def _stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: what finished (a run's tasks, explain's phases, a sweep's cells) stays
    committed, and the same command resumes."""
    import signal

    def stop(signum, frame):
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (e.g. called from a library thread)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    _stop_on_sigterm()
    try:
        return args.func(args)
    except ForgetlabError as error:
        print(f"forgetlab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as error:
        print(
            f"forgetlab: error: the Python package '{error.name}' is missing; run 'make demo' (or pip install -e .)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except BrokenPipeError:  # e.g. 'forgetlab presets | head'
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as error:  # a full disk met by a write other than forgetlab's own (a figure, a library's file)
        if error.errno not in FULL_DISK:
            raise
        print(f"forgetlab: error: {DiskFullError.writing(error.filename, error.strerror)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        print("forgetlab: interrupted; what finished is kept: run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
