"""The training loop: plain PyTorch, read top to bottom.

One call trains one task: whatever has ``requires_grad`` (chosen by the method, plus the task head)
is optimised with AdamW or SGD under a cosine schedule with linear warm-up (paper 1 warms up over the
first 1/18 of the steps). Extra loss terms (LwF) are callables added to the task's cross-entropy;
replayed examples (a data source) are concatenated to each batch and learned through their own head.

:func:`train_task` is the loop: it receives the recipe (``TrainConfig``), the run's resolved
:class:`~forgetlab.runtime.Runtime` (device, autocast, workers, progress) and a :class:`TaskPlan` (what
the run adds to the plain loop: LwF's terms, replay, model selection, the trackers' hook).
:func:`_set_up` makes what a task's steps share (optimiser, schedule, the compiled or eager forward),
:func:`_step` is one optimisation step, :class:`_Clock` splits the task's time for :class:`TrainStats`.
Imports run down: the batches come from :mod:`forgetlab.data.loader` (the data path evaluation uses
too); the runner and pretraining import this.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from forgetlab.data.loader import batches, make_loader
from forgetlab.errors import TrainingError
from forgetlab.runtime import Runtime

if TYPE_CHECKING:
    from forgetlab.selection import BestCheckpoint


@dataclass
class TrainStats:
    """What one task's training took. ``seconds`` is the whole call; it splits into ``warmup_seconds``
    (the first :func:`timed_warmup_steps` steps: loader start, compilation, CUDA graph capture, autotuning),
    ``selection_seconds`` (scoring checkpoints for model selection after the warm-up) and
    ``steady_seconds`` (the remaining steps: the rate a longer task trains at). The clock is read after
    a device synchronisation at the end of the warm-up and of the task, so the split is exact on CUDA."""

    steps: int
    examples: int
    seconds: float
    final_loss: float
    warmup_seconds: float = 0.0
    selection_seconds: float = 0.0
    steady_seconds: float = 0.0
    steady_examples: int = 0

    @property
    def images_per_second(self) -> float:
        """Images over the whole call, warm-up and selection included."""
        return self.examples / max(self.seconds, 1e-9)

    @property
    def steady_images_per_second(self) -> float:
        """Images per second after the warm-up, selection excluded (nan when no step came after it)."""
        return (
            self.steady_examples / self.steady_seconds
            if self.steady_examples and self.steady_seconds > 0
            else float("nan")
        )


def timed_warmup_steps(total_steps: int) -> int:
    """The steps timed as warm-up (not the learning-rate warm-up): the first 50 (as the GPU measurements, which read the
    rate from the 50th step on), or half of a shorter task."""
    return min(50, total_steps // 2)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``, each once even if shared."""
    seen, params = set(), []
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            params.append(parameter)
    return params


def count_parameters(parameters: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def backbone_parameters(model) -> tuple[int, int]:
    """``(trainable, all)`` parameters of ``model.backbone`` without its upstream classifier
    (``get_classifier()``: frozen, evaluated, never trained), each once: what ``tasks.json`` records
    and ``forgetlab anatomy`` prints, so a method's share of the backbone does not depend on how many
    upstream classes the head happens to have (LoRA r=4 on offline_vit: 12,288 of 1,198,592)."""
    head = {id(p) for p in model.upstream_head.parameters()}
    backbone = [p for p in dict.fromkeys(model.backbone.parameters()) if id(p) not in head]
    return count_parameters([p for p in backbone if p.requires_grad]), count_parameters(backbone)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear from 1/warmup up to 1, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


def hf_warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """transformers' ``get_cosine_schedule_with_warmup`` (both papers' code): ``step / warmup`` during
    the warm-up (0 at the first step), then ``0.5 (1 + cos(pi p))`` with ``p`` the fraction of the
    remaining steps done. Past ``total_steps`` the cosine goes on rising from 0, as in transformers:
    paper 1's code schedules ``(N // 32) x epochs`` steps but trains ``ceil(N / 32) x epochs``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress_)))

    return factor


def schedule_lengths(train_config, examples: int, batches_per_epoch: int, epochs: int) -> tuple[int, int, int]:
    """``(steps trained, steps the schedule spans, warm-up steps)`` of one task."""
    steps = batches_per_epoch * epochs
    if train_config.schedule == "hf_cosine":
        span = (examples // train_config.batch_size) * epochs
    else:
        span = steps
    if train_config.max_steps is not None:
        steps, span = min(steps, train_config.max_steps), min(span, train_config.max_steps)
    if train_config.warmup_steps is not None:
        warmup = train_config.warmup_steps
    elif train_config.schedule == "hf_cosine":
        warmup = math.floor(span * train_config.warmup_fraction + 1e-9)  # paper 1: steps // 18
    else:
        warmup = max(1, round(train_config.warmup_fraction * span)) if train_config.warmup_fraction else 0
    return steps, span, warmup


def make_optimizer(parameters, train_config, device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9); on CUDA their fused kernels (one launch for every parameter)."""
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if train_config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=train_config.lr, momentum=0.9, weight_decay=train_config.weight_decay, **fused
        )
    return torch.optim.AdamW(parameters, lr=train_config.lr, weight_decay=train_config.weight_decay, **fused)


AUTO_GRAPHS_MAX_BATCH = 32  # train.compile=auto takes CUDA graphs at or below this batch size (see compile_mode)


def compile_mode(train_config, device: torch.device) -> str | None:
    """How ``train.compile`` compiles the training forward: None (eager), ``"default"`` (inductor) or
    ``"reduce-overhead"`` (inductor with CUDA graphs).

    ``auto`` is eager on the CPU (compiling costs more than it saves there); on CUDA, CUDA graphs for
    batches of at most :data:`AUTO_GRAPHS_MAX_BATCH` images, where launch overhead dominates (on an H200,
    ViT-B/16 LoRA r=4, compute only: batch 32 bf16 trained at 3,348 img/s with CUDA graphs against 1,206
    eager; at batch 128 plain compilation, 3,779 against 2,913), plain compilation above.
    The same comparison in an actual run (paper 1's batch 32, fp32) is not measured yet:
    ``benchmarks/gpu_check.py`` measures it; a failed compilation trains eagerly (:func:`train_task`)."""
    choice = train_config.compile
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "reduce-overhead" or (choice == "auto" and train_config.batch_size <= AUTO_GRAPHS_MAX_BATCH):
        return "reduce-overhead"
    return "default"


def compiled(model, train_config, device: torch.device):
    """``model`` under ``torch.compile`` as :func:`compile_mode` says, else itself. Compilation happens
    at the first call of each task (the task's adapters change the graph), not per step;
    :func:`train_task` falls back to eager if it fails."""
    mode = compile_mode(train_config, device)
    if mode is None:
        return model
    return torch.compile(model, mode="reduce-overhead") if mode == "reduce-overhead" else torch.compile(model)


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: running statistics stay frozen (paper 1, ResNet)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@dataclass(frozen=True)
class TaskPlan:
    """What a caller adds to the plain loop of one task (all optional).

    ``description``: the progress bar's and the errors' name of the task; ``task_name``: the name
    ``train.task_epochs`` is looked up by (default: the head); ``freeze_batchnorm``: BatchNorm's running
    statistics stay frozen (paper 1, ResNet). ``extra_losses`` are called as ``loss(images, outputs)``
    with the outputs of the task head and of ``extra_heads`` (one backbone pass serves them all) and
    return a scalar added to the task loss (LwF). ``replay`` yields ``(images, labels)`` batches appended
    to every task batch and scored through ``replay_head``; the cross-entropy is then the mean over task
    and replayed examples together. ``selection`` (a :class:`forgetlab.selection.BestCheckpoint`) is
    called after every step and may put back the best weights it saw at the end. ``log_step(step,
    {"loss", "lr"})`` receives every value the loop reads on the host (every ``train.log_every`` steps
    and the last), for the trackers."""

    description: str = "train"
    task_name: str | None = None
    freeze_batchnorm: bool = True
    extra_losses: Sequence[Callable] = ()
    extra_heads: Sequence[str] = ()
    replay: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
    replay_head: str | None = None
    selection: BestCheckpoint | None = None
    log_step: Callable[[int, dict[str, float]], None] | None = None


def train_task(
    model, head: str, dataset: Dataset, train_config, runtime: Runtime, *, seed: int, plan: TaskPlan = TaskPlan()
) -> TrainStats:
    """Train ``model``'s trainable parameters on ``dataset`` through head ``head``, with the recipe
    ``train_config`` (a :class:`~forgetlab.config.TrainConfig`: batch size, optimiser, schedule, epochs)
    on ``runtime`` (device, autocast dtype, loader workers, progress), seeded by ``seed`` (the order of
    the batches; ``seed + 1``: the device pipeline's augmentations), with what ``plan`` adds.

    Returns the task's :class:`TrainStats`. Raises :class:`~forgetlab.errors.TrainingError` when an
    update overflows or the loss becomes non-finite.
    """
    device = runtime.device
    loader = make_loader(
        dataset,
        train_config.batch_size,
        shuffle=True,
        seed=seed,
        device=device,
        workers=runtime.workers,
        drop_last=train_config.drop_last,
    )
    task = _set_up(model, head, train_config, runtime, plan, examples=len(dataset), batches_per_epoch=len(loader))
    selection = plan.selection
    _train_mode(model, plan.freeze_batchnorm)
    step, examples, loss_value, clock = 0, 0, float("nan"), _Clock(timed_warmup_steps(task.total_steps))
    bar = runtime.progress(total=task.total_steps, desc=plan.description, unit="step")
    augment = torch.Generator().manual_seed(seed + 1)  # the device pipeline's random crops, flips and jitter
    while step < task.total_steps:
        for images, labels in batches(loader, dataset, device, augment):
            last_loss, seen = _step(task, images, labels, step)
            step, examples = step + 1, examples + seen
            # The loss is read on the host only every log_every steps (a read waits for the device).
            if step % train_config.log_every == 0 or step >= task.total_steps:
                loss_value = _read_loss(task, last_loss, step, bar)
            bar.update(1)
            clock.step_done(step, examples, device)
            if selection is not None and selection.due(step, task.total_steps):
                with clock.selecting():
                    selection.score(model, step)
                _train_mode(model, plan.freeze_batchnorm)
            if step >= task.total_steps:
                break
    _synchronize(device)
    end = time.perf_counter()
    bar.close()
    model.eval()
    if selection is not None:
        selection.restore_best(model)
    return clock.stats(end, steps=step, examples=examples, final_loss=loss_value)


@dataclass
class _Training:
    """What every step of one task shares: made once by :func:`_set_up`, used by :func:`_step`."""

    model: nn.Module
    forward: Callable  # the model, or the model under torch.compile (the model again once compilation failed)
    graphs: bool  # the compiled forward replays CUDA graphs: each step is marked as a new one
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    head: str
    heads: list[str]  # the task head, the extra heads, the replay head: one backbone pass serves them all
    train_config: object
    runtime: Runtime
    plan: TaskPlan


def _set_up(
    model, head: str, train_config, runtime: Runtime, plan: TaskPlan, *, examples: int, batches_per_epoch: int
) -> _Training:
    """A task's steps (:func:`schedule_lengths`, with the task's ``train.task_epochs``), its optimiser,
    its learning-rate schedule (stepped after every optimiser step) and its forward (:func:`compiled`)."""
    task_name = plan.task_name or head  # train.task_epochs names a task, or its dataset
    epochs = train_config.task_epochs.get(
        task_name, train_config.task_epochs.get(task_name.partition(":")[0], train_config.epochs)
    )
    total_steps, span, warmup_steps = schedule_lengths(train_config, examples, batches_per_epoch, epochs)
    parameters = trainable_parameters(model)
    optimizer = make_optimizer(parameters, train_config, runtime.device)
    forward = compiled(model, train_config, runtime.device)
    graphs = forward is not model and compile_mode(train_config, runtime.device) == "reduce-overhead"
    shape = hf_warmup_cosine if train_config.schedule == "hf_cosine" else warmup_cosine
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, shape(span, warmup_steps))
    heads = [head, *[h for h in plan.extra_heads if h != head]]
    if plan.replay is not None and plan.replay_head not in heads:
        heads.append(plan.replay_head)
    return _Training(
        model=model,
        forward=forward,
        graphs=graphs,
        optimizer=optimizer,
        schedule=schedule,
        total_steps=total_steps,
        head=head,
        heads=heads,
        train_config=train_config,
        runtime=runtime,
        plan=plan,
    )


def _step(task: _Training, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, int]:
    """One optimisation step: the replayed batch appended, one forward through every head, the loss
    (:func:`_loss`), backward, the optimiser's step, then the schedule's. ``step`` counts the steps
    done before this one. Returns the loss (detached, left on the device: reading it waits for the
    device) and the images seen. An update that overflows is a :class:`TrainingError` naming ``train.lr``."""
    if task.graphs:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the graphs' buffers may be reused
    replay_labels, device = None, task.runtime.device
    if task.plan.replay is not None:
        replay_images, replay_labels = next(task.plan.replay)
        images = torch.cat([images, replay_images.to(device, non_blocking=True)])
        replay_labels = replay_labels.to(device, non_blocking=True)
    with task.runtime.autocast():
        outputs = _forward(task, images)
        loss = _loss(task, images, outputs, labels, replay_labels)
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    try:
        task.optimizer.step()
    except RuntimeError as error:  # e.g. "value cannot be converted to type float without overflow"
        if "overflow" not in str(error):
            raise
        raise TrainingError(
            f"{task.plan.description}: the update overflowed at step {step + 1} (train.lr={task.train_config.lr:g}); "
            "lower train.lr and run again (earlier tasks are kept)"
        ) from error
    task.schedule.step()
    return loss.detach(), len(images)


def _forward(task: _Training, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of every head of ``task.heads``. A compiler failure is one printed line, and the
    task goes on eagerly from this step on."""
    try:
        return task.forward(images, task.heads)
    except Exception as error:  # noqa: BLE001 - a compiler failure, not the model's
        if task.forward is task.model:
            raise
        print(
            f"forgetlab: torch.compile failed ({type(error).__name__}: {str(error)[:120]}); training eagerly",
            flush=True,
        )
        task.forward, task.graphs = task.model, False
        return task.forward(images, task.heads)


def _loss(
    task: _Training,
    images: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    replay_labels: torch.Tensor | None,
) -> torch.Tensor:
    """The cross-entropy (with ``train.label_smoothing``) of the task's examples through its head and of
    the replayed ones (the last rows of ``images``) through theirs, summed and divided by all images,
    plus every extra loss term (LwF)."""
    count, smoothing = len(labels), task.train_config.label_smoothing
    loss = F.cross_entropy(outputs[task.head][:count].float(), labels, label_smoothing=smoothing, reduction="sum")
    if task.plan.replay is not None:
        replayed = outputs[task.plan.replay_head][count:].float()
        loss = loss + F.cross_entropy(replayed, replay_labels, label_smoothing=smoothing, reduction="sum")
    loss = loss / len(images)
    for extra in task.plan.extra_losses:
        loss = loss + extra(images, outputs)
    return loss


def _read_loss(task: _Training, loss: torch.Tensor, step: int, bar) -> float:
    """``loss`` read on the host (this waits for the device), shown on the progress bar and handed to
    the plan's ``log_step`` with the learning rate. A non-finite loss is a :class:`TrainingError` naming
    ``train.lr``."""
    value = float(loss)
    if not math.isfinite(value):
        raise TrainingError(
            f"{task.plan.description}: the loss became non-finite by step {step} (train.lr={task.train_config.lr:g}); "
            "lower train.lr and run again (earlier tasks are kept)"
        )
    bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    if task.plan.log_step is not None:
        task.plan.log_step(step, {"loss": value, "lr": task.schedule.get_last_lr()[0]})
    return value


def _train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    """Training mode, with BatchNorm's running statistics frozen when asked (before the first step and
    after every scoring for model selection, which puts the model in eval mode)."""
    model.train()
    if freeze_batchnorm:
        freeze_batchnorm_statistics(model)


@dataclass
class _Clock:
    """The split of one task's time that :class:`TrainStats` reports (started when made)."""

    warmup_steps: int  # the steps timed as warm-up (timed_warmup_steps)
    start: float = field(default_factory=time.perf_counter)
    warmup_end: float | None = None
    warmup_examples: int = 0
    selection_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0])  # during the warm-up, after it

    def step_done(self, step: int, examples: int, device: torch.device) -> None:
        """Close the warm-up at its last step."""
        if step == self.warmup_steps:  # one synchronisation per task, so the warm-up's queued work is counted in it
            _synchronize(device)
            self.warmup_end, self.warmup_examples = time.perf_counter(), examples

    @contextlib.contextmanager
    def selecting(self):
        """Time the scoring for model selection apart from the steps."""
        scoring = time.perf_counter()
        yield
        self.selection_seconds[self.warmup_end is not None] += time.perf_counter() - scoring

    def stats(self, end: float, *, steps: int, examples: int, final_loss: float) -> TrainStats:
        """The task's :class:`TrainStats`, its clock stopped at ``end`` (after a device synchronisation)."""
        if self.warmup_end is None:  # a one-step task is all warm-up
            self.warmup_end, self.warmup_examples = end, examples
        return TrainStats(
            steps=steps,
            examples=examples,
            seconds=end - self.start,
            final_loss=final_loss,
            warmup_seconds=self.warmup_end - self.start - self.selection_seconds[0],
            selection_seconds=sum(self.selection_seconds),
            steady_seconds=end - self.warmup_end - self.selection_seconds[1],
            steady_examples=examples - self.warmup_examples,
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
