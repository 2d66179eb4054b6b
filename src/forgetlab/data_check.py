"""``forgetlab data check`` and the run's own input check: everything a config needs, in one pass.

A run needs its datasets (each task by its full name: variant, class or sample split), the upstream
train split where the k-NN bank or replay reads it (ImageNet ``train/`` for every paper-2 preset),
its backbone's weights (a file, the Hugging Face cache, or an offline backbone) and WordNet 3.0
(ImageNet's class names). :func:`config_findings` checks each of them and returns one
:class:`Finding` per input, so every problem is listed at once with where the input belongs and
where to get it; :func:`require_inputs` is the run's refusal (``forgetlab run``, ``forgetlab.run``),
before anything is written, with the same list.

Each dataset is loaded exactly as a run loads it (:func:`load_upstream` and
:func:`forgetlab.data.registry.build_task`, with the config's ``data`` section and subsets), so the
image counts printed are those a run reads, and a file a run would refuse (a label outside its class
range, a listed image absent: :mod:`forgetlab.data.validate`) is reported with the run's own line,
marked INVALID; a dataset whose files are absent is MISSING. Operating-system metadata beside the
images (``._*``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) is skipped by both
(:func:`forgetlab.data.listing.listed`).

Exit codes of ``forgetlab data check`` (:func:`exit_code`): with a config, a preset or ``--for``, 2
when anything it needs is missing or invalid; with none, 2 only when something is invalid (a missing
dataset is one you may not need), or with ``--strict`` when anything is missing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab import wordnet
from forgetlab.config import DataConfig
from forgetlab.data.files import DATA_ENV
from forgetlab.data.real import IMAGENET_TRAIN_HOW
from forgetlab.data.registry import build_task, dataset_info, dataset_names, parse_task_name
from forgetlab.data.validate import InvalidDataError
from forgetlab.errors import DataError, ForgetlabError

OK, MISSING, INVALID = "ok", "MISSING", "INVALID"
PAPERS = ("paper1", "paper2")


@dataclass
class Finding:
    """One input and its state. ``where``: where it belongs (a path, or the cache it is read from);
    ``detail``: what was found, or the problem and how to get or fix the input; ``needed_by``: what
    needs it (a config key, or presets), empty when nothing given needs it; ``error``: the error a
    run meets for it (its exact line), when it is a problem."""

    name: str
    status: str
    where: str
    detail: str
    needed_by: list[str] = field(default_factory=list)
    error: ForgetlabError | None = None

    @property
    def problem(self) -> bool:
        return self.status in (MISSING, INVALID)

    def line(self) -> str:
        where = f"looked in {self.where}" if self.problem else self.where
        needed = f" [needed by {', '.join(self.needed_by)}]" if self.needed_by and self.problem else ""
        return f"  {self.name:15s} {self.status:8s} {where}: {self.detail}{needed}"


class MissingInputsError(DataError):
    """Several inputs a run needs are missing or invalid; the message lists each on its own line."""


# ------------------------------------------------------------------------------------------ datasets
def load_upstream(config, preprocess=None):
    """The upstream task as a run scores it: ``data.upstream`` built with the config's ``data`` section
    and ``preprocess``, its test set cut to ``eval.upstream_subset`` (a seeded subset) when set."""
    upstream = build_task(config.data.upstream, config.data, preprocess)
    if config.eval.upstream_subset is not None and hasattr(upstream.test, "subset"):
        upstream.test = upstream.test.subset(config.eval.upstream_subset, seed=config.seed)
    return upstream


def _root(data_config) -> str | None:
    return (data_config.root if data_config is not None else None) or os.environ.get(DATA_ENV)


def _where(dataset: str, data_config) -> str:
    """Where a dataset belongs (its registration): its folder under the data root, or where a built-in one comes
    from."""
    info = dataset_info(dataset)
    if info.folder is None:
        return info.where()
    root = _root(data_config)
    return str(Path(root).expanduser() / info.folder) if root else f"<data.root or ${DATA_ENV}>/{info.folder}"


def _counts(task) -> str:
    return f"{len(task.classes)} classes, train {len(task.train):,} / test {len(task.test):,} images"


def _load(key, load, memo: dict):
    """``(task, None)`` or ``(None, error)``: ``load()`` once per ``key`` in one check (a preset
    family shares its datasets; ImageNet's train folders are listed once)."""
    if key not in memo:
        try:
            memo[key] = (load(), None)
        except ForgetlabError as error:
            memo[key] = (None, error)
    return memo[key]


def dataset_finding(
    name: str, load, data_config, memo: dict, *, key=None, wordnet_error: str | None = None
) -> tuple[Finding, object]:
    """``(finding, task or None)`` of the task ``name``, built by ``load()`` as a run builds it (once
    per ``key`` in ``memo``; default: the name)."""
    dataset = parse_task_name(name)[0]
    where = _where(dataset, data_config)
    task, error = _load(name if key is None else key, load, memo)
    if error is None:
        return Finding(name, OK, where, _counts(task)), task
    if wordnet_error is not None and str(error) == wordnet_error:  # the files read; the names wait for WordNet
        return Finding(name, OK, where, "files read; its class names need WordNet 3.0 (see the wordnet line)"), None
    status = INVALID if isinstance(error, InvalidDataError) else MISSING
    detail = str(error)
    if dataset_info(dataset).folder is not None and not _root(data_config):
        detail = f"{detail}; then {dataset_info(dataset).how}"
    return Finding(name, status, where, detail, error=error), None


def _upstream_train_needs(config) -> list[str]:
    """The config keys that read the upstream train split."""
    needs = []
    if "knn" in config.eval.evaluators:
        needs.append("eval.upstream_evaluator=knn (the k-NN bank)")
    if "probe" in config.eval.evaluators:
        needs.append("eval.upstream_evaluator=probe (the linear probe's fit images)")
    if config.replay.size:
        needs.append(f"replay.size={config.replay.size}")
    return needs


def upstream_train_finding(upstream_name: str, task, data_config, needs: list[str]) -> Finding | None:
    """The upstream train split where ``needs`` read it: ok with its count, or MISSING with where it
    belongs (ImageNet: ``imagenet/train``) and how to get it."""
    dataset = parse_task_name(upstream_name)[0]
    label = f"{dataset} train/" if dataset == "imagenet" else f"{upstream_name} train"
    where = str(Path(_where(dataset, data_config)) / "train") if dataset == "imagenet" else _where(dataset, data_config)
    if not needs or (task is None and (dataset != "imagenet" or Path(where).is_dir())):
        return None  # not needed, or the dataset's own line says what is wrong
    if task is not None and len(task.train):
        return Finding(label, OK, where, f"{len(task.train):,} images, read by {' and '.join(needs)}")
    how = (
        IMAGENET_TRAIN_HOW
        if dataset == "imagenet"
        else f"use an upstream dataset with a train split, or drop {' and '.join(needs)}"
    )
    message = f"{label} is needed by {' and '.join(needs)} and {where} holds none; {how}"
    return Finding(label, MISSING, where, f"absent; {how}", list(needs), error=DataError(message))


def wordnet_finding() -> Finding:
    """WordNet 3.0: ImageNet's class names and the contextual-forgetting analysis read it. Where it is
    comes from :func:`forgetlab.wordnet.locate`, as ``forgetlab setup`` reports it; found, forgetlab's
    copy is made (:func:`forgetlab.wordnet.setup`), so that a source it cannot read is a problem here."""
    where, detail = wordnet.locate()
    try:
        if where is None:
            raise DataError(f"WordNet 3.0 not found: {detail}; {wordnet.INSTALL_HINT}")
        wordnet.setup()
    except ForgetlabError as error:
        return Finding("wordnet", MISSING, str(where or "$FORGETLAB_WORDNET or NLTK's data"), str(error), error=error)
    return Finding("wordnet", OK, str(where), "WordNet 3.0 (ImageNet's class names, contextual forgetting)")


# ------------------------------------------------------------------------------------------ weights
def weights_finding(backbone) -> Finding | None:
    """The weights a :class:`forgetlab.config.BackboneConfig` loads: a file (``backbone.weights``), an
    offline backbone (built by the run when absent), or timm's pretrained weights from the Hugging Face
    cache (or the hub, when it answers). None for ``backbone.random_init``."""
    from forgetlab.models.backbones import check_backbone_name
    from forgetlab.models.offline import OFFLINE_BACKBONES

    label = "weights"
    try:
        check_backbone_name(backbone.name)
    except ForgetlabError as error:
        return Finding(label, INVALID, "backbone.name", str(error), ["backbone.name"], error=error)
    if backbone.random_init:
        return None
    if backbone.weights:
        path = Path(backbone.weights).expanduser()
        if path.is_file():
            return Finding(
                label, OK, str(path), f"{backbone.name}, {path.stat().st_size / 1e6:,.1f} MB (backbone.weights)"
            )
        message = f"weights file {backbone.weights} not found; place it there or correct backbone.weights"
        return Finding(label, MISSING, str(path), message, ["backbone.weights"], error=DataError(message))
    if backbone.name in OFFLINE_BACKBONES:
        from forgetlab.models.backbones import offline_backbone_dir

        folder = offline_backbone_dir(backbone.name)
        built = (folder / "model.safetensors").exists()
        return Finding(
            label,
            OK,
            str(folder),
            f"{backbone.name}, "
            + (
                "built"
                if built
                else f"not built yet: a run builds it once (or: forgetlab pretrain --backbone {backbone.name})"
            ),
        )
    return _hub_weights(backbone.name)


def _hub_weights(name: str) -> Finding:
    """timm's pretrained weights of ``name``: in the Hugging Face cache, or downloadable now."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    from forgetlab.models.backbones import cached_hub_file, hub_offline, hub_reachable

    label, cache = "weights", f"Hugging Face cache ({constants.HF_HUB_CACHE})"
    pretrained_cfg = get_pretrained_cfg(name)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        message = (
            f"timm has no pretrained weights for {name} on the Hugging "
            f"Face hub; set backbone.weights=/path/to/model.safetensors "
            "(or backbone.random_init=true for a smoke run)"
        )
        return Finding(label, MISSING, "backbone.weights", message, ["backbone.name"], error=DataError(message))
    cached = cached_hub_file(pretrained_cfg)
    if cached is not None:
        return Finding(label, OK, str(cached), name)
    source = f"https://huggingface.co/{pretrained_cfg.hf_hub_id}"
    fix = (
        f"download model.safetensors from {source} and set backbone.weights=/path/to/model.safetensors, "
        "or run once with network access to fill the cache"
    )
    if hub_offline() or not hub_reachable():
        reason = "HF_HUB_OFFLINE=1 forbids the download" if hub_offline() else "the hub is unreachable"
        message = f"the weights of {name} are not in the Hugging Face cache and {reason}; {fix}"
        return Finding(label, MISSING, cache, message, [f"backbone.name={name}"], error=DataError(message))
    return Finding(label, OK, cache, f"{name}: not cached yet; a run downloads it from {source}")


# ------------------------------------------------------------------------------------------ one config
def config_findings(config, memo: dict | None = None) -> list[Finding]:
    """Every input ``config`` (a :class:`forgetlab.config.RunConfig`) needs, each checked: the
    backbone's weights, WordNet (when ImageNet is used), each dataset of ``data.upstream`` and
    ``data.tasks`` as the run loads it (a task without training images is INVALID), and the upstream
    train split where the k-NN bank or replay reads it. ``memo`` shares loaded datasets between configs."""
    memo = {} if memo is None else memo
    findings = [finding for finding in [weights_finding(config.backbone)] if finding is not None]
    names = list(dict.fromkeys([config.data.upstream, *config.data.tasks]))
    wordnet_error = None
    if any(parse_task_name(name)[0] == "imagenet" for name in names):
        findings.append(wordnet_finding())
        wordnet_error = str(findings[-1].error) if findings[-1].problem else None
    data_key = repr(dataclasses.replace(config.data, upstream="", tasks=[]))  # what loading a dataset reads
    for index, name in enumerate(names):
        upstream = index == 0
        load = (
            (lambda: load_upstream(config))
            if upstream
            else (lambda name=name: build_task(name, config.data, seed=config.seed))
        )
        key = (name, data_key, config.eval.upstream_subset if upstream else None, config.seed)
        finding, task = dataset_finding(name, load, config.data, memo, key=key, wordnet_error=wordnet_error)
        finding.needed_by.append("data.upstream" if upstream else "data.tasks")
        if not upstream and task is not None and len(task.train) == 0:
            message = f"task {name} has no training images; check its dataset (forgetlab data check)"
            finding = Finding(name, INVALID, finding.where, message, ["data.tasks"], error=DataError(message))
        findings.append(finding)
        if upstream and (train := upstream_train_finding(name, task, config.data, _upstream_train_needs(config))):
            findings.append(train)
    return _merged(findings)


def _merge_key(finding: Finding) -> tuple:
    """Findings with one key are one line: a problem by its place and message (the splits of a missing
    dataset share its line), anything else by its name too."""
    return (finding.where, finding.detail) if finding.problem else (finding.name, finding.where, finding.detail)


def _merged(findings: list[Finding]) -> list[Finding]:
    merged: dict[tuple, Finding] = {}
    for finding in findings:
        kept = merged.setdefault(_merge_key(finding), finding)
        if kept is not finding:
            kept.needed_by = [*dict.fromkeys([*kept.needed_by, *finding.needed_by])]
    return list(merged.values())


def require_inputs(config) -> None:
    """Refuse ``config`` when an input it needs is missing or invalid (see :func:`config_findings`):
    one problem raises the run's own error (one line); several raise :class:`MissingInputsError`
    listing every one, each with where it belongs and how to get it."""
    problems = [finding for finding in config_findings(config) if finding.problem]
    if len(problems) == 1 and problems[0].error is not None:
        raise problems[0].error
    if problems:
        lines = [
            f"{len(problems)} inputs this run needs are missing or invalid "
            f"(forgetlab data check lists them with the same config):"
        ]
        raise MissingInputsError("\n".join(lines + [finding.line() for finding in problems]))


# ------------------------------------------------------------------------------------------ reports
def paper_findings(paper: str, overrides: list[str] = ()) -> list[Finding]:
    """What every preset of ``paper`` ('paper1' or 'paper2') needs, each input once, with the presets
    that need it (``overrides``, e.g. ``data.root=...``, apply to each preset)."""
    from forgetlab import config as config_module
    from forgetlab.presets import PRESETS, preset_tree

    if paper not in PAPERS:
        raise DataError(f"unknown paper '{paper}'; give --for paper1 or --for paper2")
    merged: dict[tuple[str, str, str], Finding] = {}
    memo: dict = {}
    names = [name for name in PRESETS if name.startswith(f"{paper}-")]
    for preset in names:
        for finding in config_findings(config_module.resolve(preset_tree(preset), list(overrides)), memo):
            kept = merged.setdefault(_merge_key(finding), finding)  # two backbones: two weights lines
            kept.needed_by = [*dict.fromkeys([*(n for n in kept.needed_by if n.startswith(paper)), preset])]
    for finding in merged.values():
        if len(finding.needed_by) == len(names):
            finding.needed_by = [f"every {paper} preset"]
    return list(merged.values())


def every_dataset_findings(root: str | None = None) -> list[Finding]:
    """Every registered dataset (default variant) as a run loads it, ImageNet's train split (the k-NN
    bank of every paper-2 preset, and replay) and WordNet; nothing is marked needed."""
    data_config = DataConfig(root=root)
    findings, memo = [], {}
    for name in dataset_names():
        finding, task = dataset_finding(name, lambda name=name: build_task(name, data_config), data_config, memo)
        findings.append(finding)
        if name == "imagenet" and (
            train := upstream_train_finding(name, task, data_config, ["the k-NN bank (every paper2 preset)", "replay"])
        ):
            findings.append(train)
    findings.append(wordnet_finding())
    return findings


def exit_code(findings: list[Finding], *, needed: bool) -> int:
    """0, or 2: with ``needed`` (a config, preset or paper was given, or ``--strict``) when any input
    is missing or invalid; without, only when one is invalid."""
    if needed:
        return 2 if any(finding.problem for finding in findings) else 0
    return 2 if any(finding.status == INVALID for finding in findings) else 0


def report(findings: list[Finding], root: str | None, checked_for: str) -> list[str]:
    """The report's lines: the root, what was checked, one line per input, and a summary."""
    problems = [finding for finding in findings if finding.problem]
    lines = [
        f"real datasets root: {root or f'(not set: give --root, data.root=... or {DATA_ENV})'}",
        f"checked for: {checked_for}",
    ]
    lines += [finding.line() for finding in findings]
    lines.append(
        f"{len(problems)} of {len(findings)} inputs missing or invalid"
        if problems
        else f"all {len(findings)} inputs found"
    )
    return lines


def check_datasets(root: str | None = None) -> tuple[list[str], list[str]]:
    """The no-config report's lines (see :func:`every_dataset_findings`), and the names of the inputs
    that are missing or invalid."""
    root = root or os.environ.get(DATA_ENV)
    findings = every_dataset_findings(root)
    lines = [f"real datasets root: {root or f'(not set: give --root or {DATA_ENV})'}"] + [
        finding.line() for finding in findings
    ]
    return lines, [finding.name for finding in findings if finding.problem]
