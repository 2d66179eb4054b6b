"""The incremental run: paper 1's protocol for any method.

For each task of the sequence: a new linear head; the method prepares the backbone (a fresh LoRA
adapter, by default); the adapter and the head train, with LwF's distillation term and replayed
upstream examples when the config asks for them; the method finishes the task (the adapter is
merged into the backbone weights, in fp32); then the upstream task is scored with its original,
frozen head and every task so far with its own head. Row ``i`` of the accuracy matrix is committed
atomically after task ``i``, with the model, so running the same command again resumes after the
last finished task and gives the same matrix as an uninterrupted run (each task is seeded from the
run's seed and its index, not from what ran before it in the same process).

:func:`run` reads as that protocol, one named step each: :func:`resolve` (every refusal; nothing is
written), :func:`open_run` (lock, config, environment; row 0 scores the pretrained model, or the run
resumes after its last commit), then for each pending phase :func:`prepare_phase`, :func:`train_phase`,
:func:`finish_phase`, :func:`score_phase` and :func:`commit_phase`. The steps share one
:class:`RunState`; a :class:`Phase` holds what one phase has produced so far. LwF is wired in
:func:`lwf_terms`, replay in :func:`replay_batches` (its buffer is built once, in :func:`open_run`),
model selection in :func:`best_checkpoint`.

Imports run downwards: the run's own modules (:mod:`forgetlab.run_checks`, :mod:`forgetlab.run_folder`,
:mod:`forgetlab.provenance`, :mod:`forgetlab.trackers`, :mod:`forgetlab.pretrain`), then learning,
data, config, methods, models and results; :mod:`forgetlab.reporting.figures` only when a tracker
draws the matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from forgetlab import caches
from forgetlab import config as config_module
from forgetlab.data import build_task
from forgetlab.data_check import load_upstream
from forgetlab.data.device_pipeline import encoded
from forgetlab.data.eval_cache import EvalCropCache, cache_keys_under
from forgetlab.data.files import preprocess_for
from forgetlab.data.offline import WORLD_DATASETS, world_dir
from forgetlab.errors import ConfigError, DataError
from forgetlab.evaluate import (
    KNNEvaluator,
    ProbeEvaluator,
    UpstreamEvaluators,
    UpstreamResult,
    accuracy,
    build_upstream_evaluator,
    confidence_interval,
    dataset_labels,
    predict,
)
from forgetlab.methods import build_method
from forgetlab.models.backbones import load_backbone, offline_backbone_dir
from forgetlab.models.offline import OFFLINE_BACKBONES
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.pretrain import ensure_pretrained
from forgetlab.provenance import environment_record, inputs_record, normalisation_note, read_environment, with_start
from forgetlab.regularisers import DistillationLoss, ReplayBuffer
from forgetlab.results import AccuracyMatrix, RunFolder, save_safetensors, task_metadata, write_json, write_npz
from forgetlab import run_drift, run_updates
from forgetlab.run_checks import check_finite, check_image_channels, check_local_inputs, check_upstream_head
from forgetlab.run_folder import check_folder, open_folder, read_checkpoint
from forgetlab.runtime import Runtime, configure_matmul_precision, configure_threads, precision_warning, seed_everything
from forgetlab.selection import BestCheckpoint
from forgetlab.trackers import Tracker, check_trackers, open_trackers
from forgetlab.train import TaskPlan, backbone_parameters, count_parameters, train_task, trainable_parameters

if TYPE_CHECKING:
    from forgetlab.config import RunConfig
    from forgetlab.data.base import TaskData
    from forgetlab.methods.base import Method
    from forgetlab.models.backbones import Backbone
    from forgetlab.train import TrainStats


@dataclass
class RunState:
    """What the steps of one run share. :func:`resolve` fills it up to ``evaluate_upstream``;
    :func:`open_run` adds the model, the replay buffer and the committed records; each phase adds to
    the matrix and the records."""

    config: RunConfig
    log: Callable[[str], None]
    folder: RunFolder
    method: Method
    runtime: Runtime  # device, precision, autocast dtype, evaluation batch size, workers, pipeline, progress
    backbone: Backbone
    preprocess: object | None  # the backbone's preprocessing (None: the offline world's images bring their own)
    upstream: TaskData
    tasks: list[TaskData]  # one per phase, i.e. per name in data.tasks
    # Several phases may train one task (paper 1's long setting: NAME:samples_half1, then NAME:samples_half2),
    # which then shares its head and matrix column: column -> the task data it is tested on (its first phase's).
    columns: dict[str, TaskData]
    evaluate_upstream: UpstreamEvaluators | None = None  # the config's upstream evaluators (head, k-NN or both)
    upstream_result: UpstreamResult | None = None  # the last scoring of the upstream task
    drift: run_drift.DriftProbe | None = None  # representation drift per unit (None: eval.probe_images=0)
    model: MultiHeadModel | None = None
    replay: ReplayBuffer | None = None  # replayed upstream examples, fixed for the whole run
    matrix: AccuracyMatrix | None = None
    task_records: list[dict] = field(default_factory=list)  # tasks.json: one per committed phase
    upstream_records: list[dict] = field(default_factory=list)  # upstream_eval.json: one per matrix row
    completed: int = 0  # phases committed before this process started
    tracker: Tracker = field(default_factory=Tracker)


@dataclass
class Phase:
    """One phase as its steps fill it in (``index`` 1-based: row ``index`` of the matrix)."""

    index: int
    task: TaskData
    seed: int
    extra_losses: list  # LwF's distillation terms (each holds a teacher copy until training ends)
    trainable: int  # trainable parameters, heads included
    trainable_backbone: int
    backbone_size: int
    selection: BestCheckpoint | None = None
    stats: TrainStats | None = None
    upstream_accuracy: float = math.nan
    predictions: object = None  # the upstream test set's predicted labels
    row: dict[str, float] = field(default_factory=dict)
    eval_seconds: float = 0.0
    drift: list[dict] | None = None  # drift.csv's rows of this phase (None: drift off)
    updates_from: dict | None = None  # the trainable backbone tensors as the phase began (save.updates)


def run(config, *, log=print) -> RunFolder:
    """Run (or resume) the sequence described by ``config``; return its folder. The folder is locked
    while this runs: a second process on it gets a one-line error."""
    state = resolve(config, log)  # every refusal before anything is written
    with contextlib.ExitStack() as stack:
        open_run(state, stack)  # lock, config, environment; row 0, or resume after the last commit
        state.tracker = open_tracker(state)
        stack.callback(state.tracker.close)
        for index in range(state.completed + 1, len(state.tasks) + 1):
            phase = prepare_phase(state, index)  # seed, head, method.prepare, what trains
            train_phase(state, phase)
            finish_phase(state, phase)  # method.finish (merge, ...), then a finite check
            score_phase(state, phase)  # upstream, then every task so far
            commit_phase(state, phase)  # files, progress.json, trackers, the log line
    return state.folder


# ------------------------------------------------------------------------------------------ set-up
def resolve(config, log) -> RunState:
    """Everything a run needs before its folder, and every refusal a run can meet before it writes:
    the method's options, tracker packages, local inputs, the backbone (an offline one not built yet is
    pretrained here, once), its image channels and head, the tasks and the replay split."""
    folder = RunFolder(config.run_dir)
    method = build_method(config.method)  # validates the method's options before anything is written
    runtime = Runtime.from_config(config)  # resolved once; training and evaluation receive it
    configure_matmul_precision(runtime.device, runtime.precision)
    if warning := precision_warning(runtime.device, runtime.precision):
        log(warning)
    check_trackers(config)  # a missing tracker package is refused before a download or a pretraining
    check_local_inputs(config)  # likewise every dataset folder and the weights file
    ensure_pretrained(config.backbone, device=runtime.device)  # an offline backbone not built yet: once, explicitly
    backbone = load_backbone(config.backbone)
    check_image_channels(config, backbone)
    preprocess, upstream = upstream_task(config, backbone)
    if config.data.max_test is not None:
        subset = config.eval.upstream_subset
        log(
            f"data.max_test={config.data.max_test} applies to the upstream "
            f"test set too: {len(upstream.test):,} images (a seeded subset)"
            + (
                f"; eval.upstream_subset={subset} asks for more, so all {len(upstream.test):,} are scored"
                if subset is not None and subset > len(upstream.test)
                else ""
            )
        )
    if note := normalisation_note(config, preprocess):  # inferred, not stated: say which
        log(note)
    tasks, columns = build_phases(config, preprocess)
    state = RunState(config, log, folder, method, runtime, backbone, preprocess, upstream, tasks, columns)
    place_data(state)
    check_upstream_head(config, backbone, state.upstream)
    method.check_loaded(backbone.model)  # e.g. a LoRA target the forward pass skips (the options: with the config)
    if config.replay.size and len(state.upstream.train) == 0:
        raise ConfigError(
            f"replay needs the upstream train split and {config.data.upstream} has none; set replay.size=0"
        )
    return state


def upstream_task(config, backbone):
    """``(preprocess, upstream task)`` as a run scores it: the backbone's preprocessing (None for the
    offline world, whose images bring their own), the upstream test set in the config's subset."""
    preprocess = None
    if not backbone.name.startswith("offline_"):
        preprocess = preprocess_for(backbone.model, config.backbone.image_size, config.preprocess)
    return preprocess, load_upstream(
        config, preprocess.for_upstream() if preprocess else None
    )  # as 'forgetlab data check' loads it


def build_phases(config, preprocess) -> tuple[list, dict]:
    """``(tasks, columns)``: one task per name in ``data.tasks``, and each column's first task. Refuses a
    task without training images, and phases of one column with different class counts."""
    tasks = [build_task(name, config.data, preprocess, seed=config.seed) for name in config.data.tasks]
    columns: dict[str, object] = {}  # column -> the task data it is tested on (its first phase's)
    for task in tasks:
        if len(task.train) == 0:
            raise DataError(f"task {task.name} has no training images; check its dataset (forgetlab data check)")
        first = columns.setdefault(task.column, task)
        if first.num_classes != task.num_classes:
            raise ConfigError(
                f"{first.name} and {task.name} train one head but have "
                f"{first.num_classes} and {task.num_classes} classes"
            )
    return tasks, columns


def place_data(state: RunState) -> None:
    """Real images: decoded on the device when ``data.pipeline`` resolves to it, and evaluation crops
    computed once per machine (``data.eval_cache``); then the upstream evaluator over them."""
    config, preprocess, device = state.config, state.preprocess, state.runtime.device
    if preprocess is not None and state.runtime.pipeline == "device":
        state.upstream = encoded(
            state.upstream, preprocess.for_upstream()
        )  # replay reads its train split on the device too
        state.tasks = [encoded(task, preprocess) for task in state.tasks]
        state.columns = {column: next(t for t in state.tasks if t.column == column) for column in state.columns}
    crop_cache = EvalCropCache.from_config(config.data, device, state.log) if preprocess is not None else None
    if crop_cache is not None:
        state.upstream = dataclasses.replace(
            state.upstream, test=crop_cache(state.upstream.test, what=f"{state.upstream.name} test")
        )
        state.columns = {
            column: dataclasses.replace(task, test=crop_cache(task.test, what=f"{task.name} test"))
            for column, task in state.columns.items()
        }
    state.evaluate_upstream = build_upstream_evaluator(config.eval, state.upstream, crop_cache=crop_cache)
    pretrained = run_drift.fresh_pretrained(config, device)
    state.drift = run_drift.build_drift(
        config, state.upstream.test, state.runtime, pretrained, state.log, state.upstream.class_synsets
    )


def cache_keys(state: RunState) -> dict[str, set[str]]:
    """The keys of the caches under ``$FORGETLAB_HOME`` that the resolved run reads or writes before it
    trains (:mod:`forgetlab.caches`): the k-NN bank and the linear probe's fit features of the pretrained
    row, the evaluation crops and decoded images of its datasets, the offline world, the offline backbone.
    Nothing is computed or written."""
    keys: dict[str, set[str]] = {cache: set() for cache in caches.FORMATS}
    datasets = [
        state.upstream.train,
        state.upstream.test,
        *(t.train for t in state.tasks),
        *(t.test for t in state.columns.values()),
    ]
    for knn in (
        evaluator for evaluator in state.evaluate_upstream.evaluators.values() if isinstance(evaluator, KNNEvaluator)
    ):
        datasets.append(knn.bank)
        if knn.cache_dir is not None:
            keys["knn-banks"].add(knn.bank_key(MultiHeadModel(state.backbone.model), None, state.runtime))
    for probe in (e for e in state.evaluate_upstream.evaluators.values() if isinstance(e, ProbeEvaluator)):
        datasets.append(probe.images)
        keys["probe-features"].add(probe.features_key(MultiHeadModel(state.backbone.model), state.runtime))
    for cache, key in (found for dataset in datasets for found in cache_keys_under(dataset)):
        keys[cache].add(key)
    names = [state.config.data.upstream, *state.config.data.tasks]
    if any(name.split(":")[0] in WORLD_DATASETS for name in names):
        keys["offline-world"].add(world_dir().name)
    if key := offline_backbone_key(state.config.backbone):
        keys["backbones"].add(key)
    return keys


def offline_backbone_key(backbone_config) -> str | None:
    """The folder name of the pretrained offline backbone ``backbone_config`` loads, or None when it
    loads another one (a timm name, a weights file, random weights)."""
    if (
        backbone_config.name not in OFFLINE_BACKBONES
        or backbone_config.weights is not None
        or backbone_config.random_init
    ):
        return None
    return offline_backbone_dir(backbone_config.name).name


def open_run(state: RunState, stack: contextlib.ExitStack) -> None:
    """Take the folder (its lock held until ``stack`` closes) and give a new one its config, or check
    an existing one's; build the replay buffer and the model; then score the pretrained model as row 0
    (a new folder) or resume after the last commit."""
    config, folder = state.config, state.folder
    check_folder(folder, config)  # before the lock, so a refused run touches nothing, not even the lock file
    folder.verify()  # likewise: a corrupt folder is refused untouched (checked again under the lock)
    stack.enter_context(folder.lock())  # one owner per folder, from here to the end
    open_folder(folder, config)  # checked again under the lock
    configure_threads()
    if config.replay.size:  # built once: the same upstream examples are replayed in every phase
        state.replay = ReplayBuffer(state.upstream.train, config.replay.size, seed=config.seed)
    state.model = MultiHeadModel(state.backbone.model).to(state.runtime.device)
    if state.runtime.device.type == "cuda" and not hasattr(state.backbone.model, "blocks"):
        state.model = state.model.to(memory_format=torch.channels_last)  # convolutions run faster in NHWC on GPUs
    progress = folder.state()
    if progress is None:
        score_pretrained(state)
    else:
        resume(state, progress)


def score_pretrained(state: RunState) -> None:
    """A new folder: its environment and upstream label space, then row 0 (the pretrained model), committed."""
    folder, backbone, upstream, tasks = state.folder, state.backbone, state.upstream, state.tasks
    record_start(state, 0)
    write_json(folder.upstream, task_metadata(upstream))
    state.matrix = AccuracyMatrix(
        columns=[UPSTREAM, *state.columns], phases=[t.name for t in tasks], phase_columns=[t.column for t in tasks]
    )
    start = time.perf_counter()
    upstream_accuracy, predictions, upstream_record = score_upstream(state, 0)
    state.upstream_records, state.task_records = [upstream_record], []
    state.matrix.add_row({UPSTREAM: upstream_accuracy})
    write_npz(
        folder.predictions(0),
        predictions=predictions,
        labels=dataset_labels(upstream.test),
        **evaluator_predictions(state),
    )
    drift_files = run_drift.write_phase(folder, 0, state.drift.rows(state.model, 0)) if state.drift else []
    folder.commit(
        0,
        len(tasks),
        state.matrix,
        state.task_records,
        state.upstream_records,
        [folder.predictions(0), folder.upstream, *drift_files],
    )
    run_drift.write_view(folder, 0)
    state.log(
        f"pretrained {backbone.name}: upstream {100 * upstream_accuracy:.2f}% ({time.perf_counter() - start:.1f}s)"
    )
    state.completed = 0


def resume(state: RunState, progress: dict) -> None:
    """An existing folder: check and repair it, read its committed records, and put the model back as
    the last commit left it (its heads, the method's state, the checkpoint)."""
    folder, tasks, model = state.folder, state.tasks, state.model
    completed = progress["completed_tasks"]
    if progress["total_tasks"] != len(tasks):
        raise DataError(
            f"{folder.progress} records {progress['total_tasks']} "
            f"tasks but the config has {len(tasks)}; delete the folder"
        )
    folder.verify()  # every committed file against its hash, before anything is read from it
    folder.write_views()  # repairs views a kill between commit and views left behind
    run_drift.write_view(folder, completed)
    folder.clean()  # temporary files and checkpoints of an uncommitted phase
    state.matrix, state.task_records, state.upstream_records = (
        folder.read_matrix(),
        folder.read_tasks(),
        folder.read_upstream_eval(),
    )
    for column in dict.fromkeys(task.column for task in tasks[:completed]):
        model.add_head(column, state.columns[column].num_classes)
    if completed:
        state.method.restore(model, [(task.column, task.name) for task in tasks[:completed]], folder.path)
        model.load_state_dict(read_checkpoint(folder.checkpoint), strict=True)
        model.to(state.runtime.device)
    if completed == len(tasks):
        state.log(f"{folder.path} is complete ({completed} tasks); nothing to do")
    else:
        record_start(state, completed + 1)
        state.log(f"resuming {folder.path} after task {completed}/{len(tasks)}")
    state.completed = completed


def record_start(state: RunState, phase: int) -> None:
    """Append this start (a new folder: ``phase`` 0; a resume: the first phase it runs) to
    ``environment.json``'s history, its machine, packages and inputs as the file's top-level fields
    (:func:`forgetlab.provenance.with_start`). A finished run resumed writes nothing."""
    current = {
        **environment_record(state.runtime.device),
        "backbone_recipe": state.backbone.recipe,
        "inputs": inputs_record(state.config, state.backbone, state.preprocess),
    }
    previous = read_environment(state.folder.environment) if phase > 0 else None
    write_json(state.folder.environment, with_start(previous, current, phase))


def open_tracker(state: RunState) -> Tracker:
    """The trackers ``track.*`` asks for, only for a run with something to do: a finished run writes
    nothing, not even events."""
    if state.completed < len(state.tasks):
        return open_trackers(state.config, state.folder.path, config_module.to_dict(state.config))
    return Tracker()


# ------------------------------------------------------------------------------------- one phase
def prepare_phase(state: RunState, index: int) -> Phase:
    """Seed the phase, add (or reuse) its task's head, let the method prepare the backbone, and set
    what trains: the method's parameters and this head; earlier heads only when LwF trains them; the
    upstream head never (it is evaluated, never trained)."""
    config, model, task = state.config, state.model, state.tasks[index - 1]
    seed = seed_everything(config.seed, index)
    seen_columns = list(dict.fromkeys(t.column for t in state.tasks[: index - 1]))
    extra_losses, lwf_heads = lwf_terms(state, task, seen_columns)  # the teacher: the model as this phase starts
    head = model.heads[task.column] if task.column in model.heads else model.add_head(task.column, task.num_classes)
    state.method.prepare(model, task.column)
    model.heads.requires_grad_(False)  # earlier heads stay as they are ...
    for column in lwf_heads:  # ... unless LwF's distillation trains them (paper 1's code)
        model.heads[column].requires_grad_(True)
    head.requires_grad_(True)
    model.upstream_head.requires_grad_(False)  # evaluated, never trained
    model.to(state.runtime.device)
    trainable = count_parameters(trainable_parameters(model))
    trainable_backbone, backbone_size = backbone_parameters(model)
    phase = Phase(index, task, seed, extra_losses, trainable, trainable_backbone, backbone_size)
    if config.save.updates and not state.method.keeps_updates:
        phase.updates_from = run_updates.snapshot(model.backbone)
    return phase


def lwf_terms(state: RunState, task, seen_columns: list[str]) -> tuple[list, list[str]]:
    """LwF, wired here only: ``(losses, heads)``, the distillation term for ``train_task`` (empty
    when ``lwf.alpha`` is 0) and the earlier heads it trains (``lwf.train_earlier_heads``). Call before
    the phase's head and ``method.prepare``: the teacher is a copy of the model as the phase starts."""
    lwf, isolates = state.config.lwf, state.method.isolates_tasks
    if not lwf.alpha > 0:
        return [], []
    # Every head learned before this task, ImageNet's included; in the long setting that is also this
    # task's own head on its second pass (paper 1's code: Avalanche's LwF distils every task seen before).
    distilled = [UPSTREAM, *([] if isolates else seen_columns)]
    losses = [DistillationLoss(state.model, distilled, lwf.alpha, lwf.temperature)]
    earlier = [] if isolates else [column for column in seen_columns if column != task.column]
    return losses, earlier if lwf.train_earlier_heads else []


def replay_batches(state: RunState, seed: int):
    """Replay, drawn here only: endless batches of the run's buffer in the phase's seeded order (None
    without replay); learned through the upstream head."""
    if not state.replay:
        return None
    return state.replay.batches(state.config.replay.batch_size, seed, state.runtime.device)


def best_checkpoint(state: RunState, column: str) -> BestCheckpoint | None:
    """Model selection, wired here only: with ``train.select=best``, score the column's test set every
    ``train.eval_every`` steps and keep the best weights (paper 2's code); None with ``last``."""
    config = state.config
    if config.train.select != "best":
        return None
    test_set, labels = state.columns[column].test, dataset_labels(state.columns[column].test)

    def score(scored_model):
        with state.method.evaluating(scored_model, column):
            predictions = predict(scored_model, column, test_set, state.runtime, description=f"select {column}")
            return accuracy(predictions, labels)

    return BestCheckpoint(config.train.eval_every, score)


def train_phase(state: RunState, phase: Phase) -> None:
    """Train the phase's task (with LwF's terms, replayed batches and model selection when configured);
    the tracker's steps continue the global step of the committed phases."""
    config, task = state.config, phase.task
    phase.selection = best_checkpoint(state, task.column)
    offset = sum(record["steps"] for record in state.task_records)
    plan = TaskPlan(
        description=f"task {phase.index}/{len(state.tasks)} {task.name}",
        task_name=task.name,
        extra_losses=phase.extra_losses,
        extra_heads=[h for loss in phase.extra_losses for h in loss.heads],
        replay=replay_batches(state, phase.seed),
        replay_head=UPSTREAM,
        selection=phase.selection,
        log_step=lambda step, values: state.tracker.step(offset + step, values),
    )
    phase.stats = train_task(
        state.model, task.column, task.train, config.train, state.runtime, seed=phase.seed, plan=plan
    )
    phase.extra_losses = []  # the teacher copy


def finish_phase(state: RunState, phase: Phase) -> None:
    """The method finishes the task (merge, expansion, nothing), then nothing trains and no weight may be
    non-finite (a :class:`TrainingError` before the phase is committed)."""
    state.method.finish(state.model, phase.task.column)
    state.model.requires_grad_(False)
    check_finite(state.model, phase.task.name, state.config)


def score_upstream(state: RunState, row: int):
    """``(accuracy, predictions, record)`` of the upstream test set with the config's evaluator (the
    frozen upstream head, k-NN, or several: then each one's accuracy under its name and the k-NN's at every k under
    ``knn_at_k``); the record is ``upstream_eval.json''s for matrix row ``row``."""
    config = state.config
    start = time.perf_counter()
    with state.method.evaluating(state.model, UPSTREAM):
        result = state.evaluate_upstream(state.model, state.upstream.test, state.runtime)
    state.upstream_result, value, predicted = result, result.accuracy, result.predictions
    record = {"row": row, "accuracy": value, "images": len(predicted), "seconds": round(time.perf_counter() - start, 2)}
    if config.eval.upstream_subset is not None:
        record["ci95"] = confidence_interval(value, len(predicted))
    record.update(result.record())  # several evaluators: each one's accuracy by name; the k-NN's at every k
    return value, predicted, record


def evaluator_predictions(state: RunState) -> dict:
    """``predictions_<name>`` of every upstream evaluator of the last scoring, when there are several
    (the lost/misaligned split bootstraps over them); empty with one."""
    return state.upstream_result.predictions_by_evaluator()


def score_phase(state: RunState, phase: Phase) -> None:
    """Row ``phase.index`` of the matrix: the upstream task, then every task seen so far with its own head."""
    start = time.perf_counter()
    phase.upstream_accuracy, phase.predictions, upstream_record = score_upstream(state, phase.index)
    state.upstream_records.append(upstream_record)
    phase.row = {UPSTREAM: phase.upstream_accuracy}
    for column in dict.fromkeys(t.column for t in state.tasks[: phase.index]):
        seen = state.columns[column]
        with state.method.evaluating(state.model, column):
            seen_predictions = predict(state.model, column, seen.test, state.runtime, description=f"eval {column}")
        phase.row[column] = accuracy(seen_predictions, dataset_labels(seen.test))
    if state.drift:
        phase.drift = state.drift.rows(state.model, phase.index, state.method, domain=phase.task.domain_synset)
    state.matrix.add_row(phase.row)
    phase.eval_seconds = time.perf_counter() - start


def commit_phase(state: RunState, phase: Phase) -> None:
    """Commit the phase: its own files first (new names), then ``progress.json``, atomically; then the
    trackers and the log line."""
    folder, index, task = state.folder, phase.index, phase.task
    state.task_records.append(task_record(phase))
    write_npz(
        folder.predictions(index),
        predictions=phase.predictions,
        labels=dataset_labels(state.upstream.test),
        **evaluator_predictions(state),
    )
    state.method.save_task(task.column, folder.path, phase=task.name)
    save_safetensors(folder.checkpoint_for(index), state.model.state_dict())
    adapter_files = (
        sorted((folder.path / "adapters" / task.name).glob("*"))
        if (folder.path / "adapters" / task.name).is_dir()
        else []
    )
    drift_files = run_drift.write_phase(folder, index, phase.drift) if phase.drift is not None else []
    update_files = (
        [run_updates.write(folder, task.name, phase.updates_from, state.model.backbone)]
        if phase.updates_from is not None
        else []
    )
    folder.commit(
        index,
        len(state.tasks),
        state.matrix,
        state.task_records,
        state.upstream_records,
        [folder.predictions(index), folder.checkpoint_for(index), *adapter_files, *drift_files, *update_files],
    )
    run_drift.write_view(folder, index)
    track_phase(state.tracker, index, phase.row, state.matrix)
    stats = phase.stats
    drop = phase.upstream_accuracy - state.matrix.values[0][0]
    state.log(
        f"task {index}/{len(state.tasks)} {task.name}: {stats.steps} steps in {stats.seconds:.1f}s (warm-up "
        f"{stats.warmup_seconds:.1f}s, selection {stats.selection_seconds:.1f}s, steady "
        f"{_rate(stats.steady_images_per_second)}), {phase.trainable_backbone:,} trainable backbone parameters "
        f"({100 * phase.trainable_backbone / phase.backbone_size:.3f}%); upstream "
        f"{100 * phase.upstream_accuracy:.2f}% ({100 * drop:+.2f}), {task.column} {100 * phase.row[task.column]:.2f}%"
    )


def task_record(phase: Phase) -> dict:
    """``tasks.json``'s record of a trained and scored phase: its task, what trained, how long it took."""
    task, stats = phase.task, phase.stats
    return {
        "task": task.name,
        "column": task.column,
        "num_classes": task.num_classes,
        "domain_synset": task.domain_synset,
        "domain_word": task.domain_word,
        "train_images": len(task.train),
        "trainable_parameters": phase.trainable,
        "trainable_backbone_parameters": phase.trainable_backbone,
        "backbone_parameters": phase.backbone_size,
        "trainable_fraction_of_backbone": phase.trainable_backbone / phase.backbone_size,
        "steps": stats.steps,
        "train_seconds": round(stats.seconds, 2),
        "images_per_second": round(stats.images_per_second, 1),
        "warmup_seconds": round(stats.warmup_seconds, 2),  # loader start, compilation, graph capture
        "selection_seconds": round(stats.selection_seconds, 2),  # scoring checkpoints (train.select=best)
        "steady_seconds": round(stats.steady_seconds, 2),
        # None when every step was warm-up (a task of one step): JSON has no NaN
        "steady_images_per_second": round(rate, 1) if math.isfinite(rate := stats.steady_images_per_second) else None,
        "final_loss": stats.final_loss,
        "eval_seconds": round(phase.eval_seconds, 2),
        **({"selection": phase.selection.record()} if phase.selection else {}),
    }


def track_phase(tracker: Tracker, index: int, row: dict[str, float], matrix: AccuracyMatrix) -> None:
    """Hand the trackers a committed phase: its row, the matrix and, for a tracker that draws it
    (TensorBoard), the matrix as a figure; matplotlib runs only for such a tracker."""
    figure = None
    if tracker.wants_figure:
        from forgetlab.reporting.figures import matrix_figure

        figure = matrix_figure(matrix, f"after phase {index}")
    tracker.phase(index, row, matrix, figure)


def _rate(images_per_second: float) -> str:
    return f"{images_per_second:.0f} img/s" if math.isfinite(images_per_second) else "n/a: all warm-up"
