"""The incremental run: paper 1's protocol for any method.

For each task of the sequence: a new linear head; the method prepares the backbone (a fresh LoRA
adapter, by default); the adapter and the head train, with LwF's distillation term and replayed
upstream examples when the config asks for them; the method finishes the task (the adapter is
merged into the backbone weights, in fp32); then the upstream task is scored with its original,
frozen head and every task so far with its own head. Row ``i`` of the accuracy matrix is committed
atomically after task ``i``, with the model, so running the same command again resumes after the
last finished task and gives the same matrix as an uninterrupted run (each task is seeded from the
run's seed and its index, not from what ran before it in the same process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from forgetlab import config as config_module
from forgetlab.data import build_task
from forgetlab.data.registry import image_channels
from forgetlab.errors import ConfigError, DataError, TrainingError
from forgetlab.data.device_pipeline import encoded, resolve_pipeline
from forgetlab.data.eval_cache import EvalCropCache
from forgetlab.data.files import preprocess_for
from forgetlab.evaluate import accuracy, build_upstream_evaluator, confidence_interval, dataset_labels, predict
from forgetlab.methods.base import build_method
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.pretrain import ensure_pretrained
from forgetlab.provenance import inputs_record, normalisation_note
from forgetlab.regularisers import DistillationLoss, ReplayBuffer
from forgetlab.results import AccuracyMatrix, RunFolder, atomic_write_text, save_safetensors, write_json, write_npz
from forgetlab.selection import BestCheckpoint
from forgetlab.trackers import Tracker, check_trackers, open_trackers
from forgetlab.runtime import autocast_dtype, configure_matmul_precision, configure_threads, precision_warning, resolve_device, seed_everything
from forgetlab.train import backbone_parameters, count_parameters, train_task, trainable_parameters


def environment_record(device: torch.device) -> dict:
    packages = {}
    for name in ("forgetlab", "torch", "torchvision", "timm", "numpy", "safetensors", "nltk", "peft"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def upstream_task(config, backbone):
    """``(preprocess, upstream task)`` as a run scores it: the backbone's preprocessing (None for the
    offline world, whose images bring their own), the upstream test set in the config's subset."""
    preprocess = None
    if not backbone.name.startswith("offline_"):
        preprocess = preprocess_for(backbone.model, config.backbone.image_size, config.preprocess)
    upstream = build_task(config.data.upstream, config.data, preprocess.for_upstream() if preprocess else None)
    if config.eval.upstream_subset is not None and hasattr(upstream.test, "subset"):
        upstream.test = upstream.test.subset(config.eval.upstream_subset, seed=config.seed)
    return preprocess, upstream


def _rate(images_per_second: float) -> str:
    return f"{images_per_second:.0f} img/s" if math.isfinite(images_per_second) else "n/a: all warm-up"


def check_image_channels(config, backbone) -> None:
    """Refuse, before anything is written, a backbone whose first convolution reads other images than
    the run's datasets hold (an RGB timm model on the offline world's grayscale, or the reverse)."""
    conv = next((m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return
    for name in [config.data.upstream, *config.data.tasks]:
        if (channels := image_channels(name)) != conv.in_channels:
            offline = "the offline world's 28 x 28 grayscale" if channels == 1 else "RGB"
            fix = ("set data.upstream and data.tasks to real datasets (e.g. data.upstream=imagenet) or use an offline "
                   "backbone (offline_vit, offline_resnet)") if channels == 1 else "use a timm backbone for real datasets"  # fmt: skip
            raise ConfigError(f"backbone {config.backbone.name} reads {conv.in_channels}-channel images but {name} holds "
                              f"{offline} images ({channels} channel{'s' if channels > 1 else ''}); {fix}")  # fmt: skip


def read_checkpoint(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise DataError(f"{path} is not a readable checkpoint ({type(error).__name__}); delete the run folder and run again") from error


def check_finite(model, task: str, config) -> None:
    """Refuse a task whose training left non-finite weights (any method), before it is committed."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingError(f"task {task}: training left non-finite weights in {name} (train.lr={config.train.lr:g}); "
                                "lower train.lr and run again (earlier tasks are kept)")  # fmt: skip


def task_metadata(task) -> dict:
    """What the analysis needs to know of the upstream task's classes (names, WordNet synsets, groups)."""
    return {
        "name": task.name,
        "classes": list(task.classes),
        "synsets": list(task.class_synsets) if task.class_synsets else None,
        "groups": list(task.class_groups) if task.class_groups else None,
    }


def check_local_inputs(config) -> None:
    """Every local input a run reads, before the backbone's weights (which may mean a download or a
    pretraining): the weights file, each real dataset's folder under ``data.root`` and the offline
    world's source files; each a one-line error naming the fix."""
    from forgetlab.data.real import SOURCES, dataset_folder
    from forgetlab.data.registry import parse_task_name
    from forgetlab.models.backbones import check_backbone_name

    check_backbone_name(config.backbone.name)  # a typo first: the closest timm names
    if config.backbone.weights and not Path(config.backbone.weights).exists():
        raise DataError(f"weights file {config.backbone.weights} not found; check backbone.weights")
    for name in dict.fromkeys([config.data.upstream, *config.data.tasks]):
        dataset = parse_task_name(name)[0]
        if dataset in SOURCES:
            dataset_folder(dataset, config.data)
        else:  # the offline world: built once from Debian's files (seconds), then read from the cache
            build_task(name, config.data)


def _open_folder(folder: RunFolder, config) -> None:
    """A new folder gets the config; an existing one must hold the same config (then we resume)."""
    _check_folder(folder, config)
    if not folder.config.exists():
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder.config, config_module.dump(config))


def _check_folder(folder: RunFolder, config) -> None:
    """Refuse a folder that holds another config, or results without one; read-only.

    The stored config is read through the current schema first, so a folder written before an
    option existed still resumes when that option is at its default (its file is left as it is)."""
    resolved = _identity(config_module.to_dict(config))
    if not folder.config.exists() and (folder.progress.exists() or folder.matrix.exists()):
        raise DataError(f"{folder.path} holds results but no config.yaml, so they cannot be resumed under a known config; "
                        "restore its config.yaml or delete that folder")  # fmt: skip
    if folder.config.exists():
        import yaml

        # An option that no longer exists keeps the file as it is, so it shows up as a difference.
        try:
            stored = config_module.normalise(config_module.parse_yaml(folder.config.read_text()))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise DataError(f"{folder.config} is not readable YAML; restore it or delete that folder") from error
        if not isinstance(stored, dict):
            raise DataError(f"{folder.config} does not hold a config; restore it or delete that folder")
        stored = _identity(stored)
        if stored != resolved:
            differing = sorted(_differences(stored, resolved))
            raise ConfigError(
                f"{folder.path} holds a run with a different config (differs in: {', '.join(differing[:4])}); "
                "choose another name=... or delete that folder"
            )


def _identity(tree: dict) -> dict:
    """What a folder's config must match to resume: everything but where it lies and the trackers."""
    return {key: value for key, value in tree.items() if key not in config_module.NOT_IDENTITY}


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def run(config, *, log=print) -> RunFolder:
    """Run (or resume) the sequence described by ``config``; return its folder. The folder is locked
    while this runs: a second process on it gets a one-line error."""
    with contextlib.ExitStack() as stack:
        return _run(config, log, stack)


def _run(config, log, stack: contextlib.ExitStack) -> RunFolder:
    folder = RunFolder(config.run_dir)
    method = build_method(config.method)  # validates the method's options before anything is written
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(device, config.precision)
    configure_matmul_precision(device, config.precision)
    if warning := precision_warning(device, config.precision):
        log(warning)
    check_trackers(config)  # a missing tracker package is refused before a download or a pretraining
    check_local_inputs(config)  # likewise every dataset folder and the weights file
    ensure_pretrained(config.backbone, device=device)  # an offline backbone not built yet: once, explicitly
    backbone = load_backbone(config.backbone)
    check_image_channels(config, backbone)
    preprocess, upstream = upstream_task(config, backbone)
    if config.data.max_test is not None:
        log(f"data.max_test={config.data.max_test} applies to the upstream test set too: {len(upstream.test):,} images (a seeded subset)")
    if note := normalisation_note(config, preprocess):  # inferred, not stated: say which
        log(note)
    # Phases: one per name in data.tasks. Several phases may train one task (paper 1's long setting:
    # NAME:samples_half1, then NAME:samples_half2), which then shares its head and matrix column.
    tasks = [build_task(name, config.data, preprocess, seed=config.seed) for name in config.data.tasks]
    columns: dict[str, object] = {}  # column -> the task data it is tested on (its first phase's)
    for task in tasks:
        if len(task.train) == 0:
            raise DataError(f"task {task.name} has no training images; check its dataset (forgetlab data check)")
        first = columns.setdefault(task.column, task)
        if first.num_classes != task.num_classes:
            raise ConfigError(f"{first.name} and {task.name} train one head but have {first.num_classes} and {task.num_classes} classes")
    if preprocess is not None and resolve_pipeline(config.data.pipeline, device) == "device":
        upstream = encoded(upstream, preprocess.for_upstream(), train=not config.replay.size)
        tasks = [encoded(task, preprocess) for task in tasks]
        columns = {column: next(t for t in tasks if t.column == column) for column in columns}
    crop_cache = EvalCropCache.from_config(config.data, device, log) if preprocess is not None else None
    if crop_cache is not None:  # real images: evaluation crops computed once per machine (data.eval_cache)
        upstream = dataclasses.replace(upstream, test=crop_cache(upstream.test, what=f"{upstream.name} test"))
        columns = {column: dataclasses.replace(task, test=crop_cache(task.test, what=f"{task.name} test")) for column, task in columns.items()}
    evaluate_upstream = build_upstream_evaluator(config.eval, upstream, crop_cache=crop_cache)
    workers = config.data.workers
    head_classes = getattr(backbone.model.get_classifier(), "out_features", 0)
    if config.eval.upstream_evaluator == "head" and head_classes != upstream.num_classes:
        raise ConfigError(
            f"the backbone's head predicts {head_classes} classes but {config.data.upstream} has "
            f"{upstream.num_classes}; set data.upstream to the dataset the backbone was trained on (e.g. data.upstream=imagenet), "
            f"or with backbone.random_init set backbone.num_classes={upstream.num_classes}"
        )
    method.check(backbone.model)  # e.g. block expansion on a ResNet: refused before anything is written
    if config.replay.size and len(upstream.train) == 0:
        raise ConfigError(f"replay needs the upstream train split and {config.data.upstream} has none; set replay.size=0")
    _check_folder(folder, config)  # before the lock, so a refused run touches nothing, not even the lock file
    folder.verify()  # likewise: a corrupt folder is refused untouched (checked again under the lock)
    stack.enter_context(folder.lock())  # one owner per folder, from here to the end
    _open_folder(folder, config)  # checked again under the lock
    configure_threads()
    replay_buffer = ReplayBuffer(upstream.train, config.replay.size, seed=config.seed) if config.replay.size else None

    model = MultiHeadModel(backbone.model).to(device)
    if device.type == "cuda" and not hasattr(backbone.model, "blocks"):
        model = model.to(memory_format=torch.channels_last)  # convolutions run faster in NHWC on GPUs

    def score_upstream(row: int):
        start = time.perf_counter()
        with method.evaluating(model, UPSTREAM):
            value, predicted = evaluate_upstream(model, upstream.test, batch_size=config.eval.batch_size, device=device,
                                                 amp_dtype=amp_dtype, workers=workers)  # fmt: skip
        record = {"row": row, "accuracy": value, "images": len(predicted), "seconds": round(time.perf_counter() - start, 2)}
        if config.eval.upstream_subset is not None:
            record["ci95"] = confidence_interval(value, len(predicted))
        if getattr(evaluate_upstream, "last", None):
            record["knn"] = {str(k): v for k, v in evaluate_upstream.last.items()}
        return value, predicted, record

    state = folder.state()
    if state is None:
        write_json(folder.environment, {**environment_record(device), "backbone_recipe": backbone.recipe,
                                        "inputs": inputs_record(config, backbone, preprocess)})  # fmt: skip
        write_json(folder.upstream, task_metadata(upstream))
        matrix = AccuracyMatrix(columns=[UPSTREAM, *columns], phases=[t.name for t in tasks], phase_columns=[t.column for t in tasks])
        start = time.perf_counter()
        upstream_accuracy, predictions, upstream_record = score_upstream(0)
        upstream_records, task_records = [upstream_record], []
        matrix.add_row({UPSTREAM: upstream_accuracy})
        write_npz(folder.predictions(0), predictions=predictions, labels=dataset_labels(upstream.test))
        folder.commit(0, len(tasks), matrix, task_records, upstream_records, [folder.predictions(0), folder.upstream])
        log(f"pretrained {backbone.name}: upstream {100 * upstream_accuracy:.2f}% ({time.perf_counter() - start:.1f}s)")
        completed = 0
    else:
        completed = state["completed_tasks"]
        if state["total_tasks"] != len(tasks):
            raise DataError(f"{folder.progress} records {state['total_tasks']} tasks but the config has {len(tasks)}; delete the folder")
        folder.verify()  # every committed file against its hash, before anything is read from it
        folder.write_views()  # repairs views a kill between commit and views left behind
        folder.clean()  # temporary files and checkpoints of an uncommitted phase
        matrix, task_records, upstream_records = folder.read_matrix(), folder.read_tasks(), folder.read_upstream_eval()
        for column in dict.fromkeys(task.column for task in tasks[:completed]):
            model.add_head(column, columns[column].num_classes)
        if completed:
            method.restore(model, [(task.column, task.name) for task in tasks[:completed]], folder.path)
            model.load_state_dict(read_checkpoint(folder.checkpoint), strict=True)
            model.to(device)
        if completed == len(tasks):
            log(f"{folder.path} is complete ({completed} tasks); nothing to do")
        else:
            log(f"resuming {folder.path} after task {completed}/{len(tasks)}")

    # Trackers only for a run with something to do: a finished run writes nothing, not even events.
    tracker = open_trackers(config, folder.path, config_module.to_dict(config)) if completed < len(tasks) else Tracker()
    stack.callback(tracker.close)
    for index in range(completed + 1, len(tasks) + 1):
        task = tasks[index - 1]
        seed = seed_everything(config.seed, index)
        seen_columns = list(dict.fromkeys(t.column for t in tasks[: index - 1]))
        earlier = [] if method.isolates_tasks else [c for c in seen_columns if c != task.column]
        extra_losses = []
        if config.lwf.alpha > 0:
            # Every head learned before this task, ImageNet's included; in the long setting that is also this
            # task's own head on its second pass (paper 1's code: Avalanche's LwF distils every task seen before).
            distilled = [UPSTREAM, *([] if method.isolates_tasks else seen_columns)]
            extra_losses.append(DistillationLoss(model, distilled, config.lwf.alpha, config.lwf.temperature))
        head = model.heads[task.column] if task.column in model.heads else model.add_head(task.column, task.num_classes)
        method.prepare(model, task.column)
        model.heads.requires_grad_(False)  # earlier heads stay as they are ...
        if config.lwf.alpha > 0 and config.lwf.train_earlier_heads:
            for column in earlier:  # ... unless LwF's distillation trains them (paper 1's code)
                model.heads[column].requires_grad_(True)
        head.requires_grad_(True)
        model.upstream_head.requires_grad_(False)  # evaluated, never trained
        model.to(device)

        trainable = trainable_parameters(model)
        trainable_backbone, backbone_size = backbone_parameters(model)
        selection = None
        if config.train.select == "best":
            test_set, labels = columns[task.column].test, dataset_labels(columns[task.column].test)

            def score(scored_model, column=task.column, test_set=test_set, labels=labels):
                with method.evaluating(scored_model, column):
                    return accuracy(predict(scored_model, column, test_set, batch_size=config.eval.batch_size, device=device,
                                            amp_dtype=amp_dtype, workers=workers, description=f"select {column}"), labels)  # fmt: skip

            selection = BestCheckpoint(config.train.eval_every, score)
        stats = train_task(
            model, task.column, task.train, config.train, device=device, amp_dtype=amp_dtype, seed=seed,
            extra_losses=extra_losses, extra_heads=[h for loss in extra_losses for h in loss.heads],
            replay=replay_buffer.batches(config.replay.batch_size, seed) if replay_buffer else None,
            replay_head=UPSTREAM, workers=workers, description=f"task {index}/{len(tasks)} {task.name}",
            task_name=task.name, selection=selection,
            log_step=lambda step, values, offset=sum(r["steps"] for r in task_records): tracker.step(offset + step, values),
        )  # fmt: skip
        del extra_losses  # the teacher copy
        method.finish(model, task.column)
        model.requires_grad_(False)
        check_finite(model, task.name, config)

        start = time.perf_counter()
        upstream_accuracy, predictions, upstream_record = score_upstream(index)
        upstream_records.append(upstream_record)
        row = {UPSTREAM: upstream_accuracy}
        for column in dict.fromkeys(t.column for t in tasks[:index]):
            seen = columns[column]
            with method.evaluating(model, column):
                seen_predictions = predict(
                    model, column, seen.test, batch_size=config.eval.batch_size, device=device,
                    amp_dtype=amp_dtype, workers=workers, description=f"eval {column}",
                )  # fmt: skip
            row[column] = accuracy(seen_predictions, dataset_labels(seen.test))
        matrix.add_row(row)
        task_records.append(
            {
                "task": task.name,
                "column": task.column,
                "num_classes": task.num_classes,
                "domain_synset": task.domain_synset,
                "domain_word": task.domain_word,
                "train_images": len(task.train),
                "trainable_parameters": count_parameters(trainable),
                "trainable_backbone_parameters": trainable_backbone,
                "backbone_parameters": backbone_size,
                "trainable_fraction_of_backbone": trainable_backbone / backbone_size,
                "steps": stats.steps,
                "train_seconds": round(stats.seconds, 2),
                "images_per_second": round(stats.images_per_second, 1),
                "warmup_seconds": round(stats.warmup_seconds, 2),  # loader start, compilation, graph capture
                "selection_seconds": round(stats.selection_seconds, 2),  # scoring checkpoints (train.select=best)
                "steady_seconds": round(stats.steady_seconds, 2),
                # None when every step was warm-up (a task of one step): JSON has no NaN
                "steady_images_per_second": round(rate, 1) if math.isfinite(rate := stats.steady_images_per_second) else None,
                "final_loss": stats.final_loss,
                "eval_seconds": round(time.perf_counter() - start, 2),
                **({"selection": selection.record()} if selection else {}),
            }
        )
        # Commit: the phase's own files first (new names), then progress.json, atomically.
        write_npz(folder.predictions(index), predictions=predictions, labels=dataset_labels(upstream.test))
        method.save_task(task.column, folder.path, phase=task.name)
        save_safetensors(folder.checkpoint_for(index), model.state_dict())
        adapter_files = sorted((folder.path / "adapters" / task.name).glob("*")) if (folder.path / "adapters" / task.name).is_dir() else []
        folder.commit(index, len(tasks), matrix, task_records, upstream_records,
                      [folder.predictions(index), folder.checkpoint_for(index), *adapter_files])  # fmt: skip
        tracker.phase(index, row, matrix)
        drop = upstream_accuracy - matrix.values[0][0]
        log(
            f"task {index}/{len(tasks)} {task.name}: {stats.steps} steps in {stats.seconds:.1f}s "
            f"(warm-up {stats.warmup_seconds:.1f}s, selection {stats.selection_seconds:.1f}s, "
            f"steady {_rate(stats.steady_images_per_second)}), "
            f"{trainable_backbone:,} trainable backbone parameters ({100 * trainable_backbone / backbone_size:.3f}%); "
            f"upstream {100 * upstream_accuracy:.2f}% ({100 * drop:+.2f}), {task.column} {100 * row[task.column]:.2f}%"
        )
    return folder
