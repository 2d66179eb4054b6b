"""The training loop: plain PyTorch, read top to bottom.

One call trains one task: whatever has ``requires_grad`` (chosen by the method, plus the task head)
is optimised with AdamW or SGD under a cosine schedule with linear warm-up (paper 1 warms up over the
first 1/18 of the steps). Extra loss terms (LwF) are callables added to the task's cross-entropy;
replayed examples (a data source) are concatenated to each batch and learned through their own head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from forgetlab.data.loader import batches, make_loader
from forgetlab.errors import TrainingError
from forgetlab.runtime import autocast, progress


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
        return self.steady_examples / self.steady_seconds if self.steady_examples and self.steady_seconds > 0 else float("nan")


def timed_warmup_steps(total_steps: int) -> int:
    """The steps timed as warm-up (not the learning-rate warm-up): the first 50 (as the issue-19 measurements, which read the rate from
    the 50th step on), or half of a shorter task."""
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
        return torch.optim.SGD(parameters, lr=train_config.lr, momentum=0.9, weight_decay=train_config.weight_decay, **fused)
    return torch.optim.AdamW(parameters, lr=train_config.lr, weight_decay=train_config.weight_decay, **fused)


AUTO_GRAPHS_MAX_BATCH = 32  # train.compile=auto takes CUDA graphs at or below this batch size (see compile_mode)


def compile_mode(train_config, device: torch.device) -> str | None:
    """How ``train.compile`` compiles the training forward: None (eager), ``"default"`` (inductor) or
    ``"reduce-overhead"`` (inductor with CUDA graphs).

    ``auto`` is eager on the CPU (compiling costs more than it saves there); on CUDA, CUDA graphs for
    batches of at most :data:`AUTO_GRAPHS_MAX_BATCH` images, where launch overhead dominates (issue 19
    on an H200, ViT-B/16 LoRA r=4, compute only: batch 32 bf16 trained at 3,348 img/s with CUDA graphs
    against 1,206 eager; at batch 128 plain compilation, 3,779 against 2,913), plain compilation above.
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


def train_task(
    model,
    head: str,
    dataset: Dataset,
    train_config,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    seed: int,
    extra_losses: Sequence[Callable] = (),
    extra_heads: Sequence[str] = (),
    freeze_batchnorm: bool = True,
    replay: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
    replay_head: str | None = None,
    workers: int = 0,
    description: str = "train",
    selection=None,
    task_name: str | None = None,
    log_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainStats:
    """Train ``model``'s trainable parameters on ``dataset`` through head ``head``.

    ``extra_losses`` are called as ``loss(images, outputs)`` with the outputs of ``head`` and of
    ``extra_heads`` (one backbone pass serves them all) and return a scalar added to the task loss.
    ``replay`` yields ``(images, labels)`` batches appended to every task batch and scored through
    ``replay_head``; the cross-entropy is then the mean over task and replayed examples together.
    ``selection`` (a :class:`forgetlab.selection.BestCheckpoint`) is called after every step and may
    put back the best weights it saw at the end. ``log_step(step, {"loss", "lr"})`` receives every value
    the loop reads on the host (every ``train.log_every`` steps and the last), for the trackers.
    """
    loader = make_loader(dataset, train_config.batch_size, shuffle=True, seed=seed, device=device, workers=workers,
                         drop_last=train_config.drop_last)  # fmt: skip
    task_name = task_name or head  # train.task_epochs names a task, or its dataset
    epochs = train_config.task_epochs.get(task_name, train_config.task_epochs.get(task_name.partition(":")[0], train_config.epochs))
    total_steps, span, warmup_steps = schedule_lengths(train_config, len(dataset), len(loader), epochs)
    parameters = trainable_parameters(model)
    optimizer = make_optimizer(parameters, train_config, device)
    forward = compiled(model, train_config, device)
    graphs = forward is not model and compile_mode(train_config, device) == "reduce-overhead"
    shape = hf_warmup_cosine if train_config.schedule == "hf_cosine" else warmup_cosine
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, shape(span, warmup_steps))
    heads = [head, *[h for h in extra_heads if h != head]]
    if replay is not None and replay_head not in heads:
        heads.append(replay_head)

    model.train()
    if freeze_batchnorm:
        freeze_batchnorm_statistics(model)
    step, examples, loss_value, start = 0, 0, float("nan"), time.perf_counter()
    warmup_end, warmup_examples, warmup = None, 0, timed_warmup_steps(total_steps)
    selection_seconds = [0.0, 0.0]  # during the warm-up, after it
    bar = progress(total=total_steps, desc=description, unit="step")
    augment = torch.Generator().manual_seed(seed + 1)  # the device pipeline's random crops, flips and jitter
    while step < total_steps:
        for images, labels in batches(loader, dataset, device, augment):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new step: the graphs' buffers may be reused
            count = len(labels)
            if replay is not None:
                replay_images, replay_labels = next(replay)
                images = torch.cat([images, replay_images.to(device, non_blocking=True)])
                replay_labels = replay_labels.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                try:
                    outputs = forward(images, heads)
                except Exception as error:  # noqa: BLE001 - a compiler failure, not the model's
                    if forward is model:
                        raise
                    print(f"forgetlab: torch.compile failed ({type(error).__name__}: {str(error)[:120]}); training eagerly", flush=True)
                    forward, graphs = model, False
                    outputs = forward(images, heads)
                smoothing = train_config.label_smoothing
                loss = F.cross_entropy(outputs[head][:count].float(), labels, label_smoothing=smoothing, reduction="sum")
                if replay is not None:
                    replayed = outputs[replay_head][count:].float()
                    loss = loss + F.cross_entropy(replayed, replay_labels, label_smoothing=smoothing, reduction="sum")
                loss = loss / len(images)
                for extra in extra_losses:
                    loss = loss + extra(images, outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                optimizer.step()
            except RuntimeError as error:  # e.g. "value cannot be converted to type float without overflow"
                if "overflow" not in str(error):
                    raise
                raise TrainingError(f"{description}: the update overflowed at step {step + 1} (train.lr={train_config.lr:g}); "
                                    "lower train.lr and run again (earlier tasks are kept)") from error  # fmt: skip
            schedule.step()
            step += 1
            examples += len(images)
            last_loss = loss.detach()
            # The loss is read on the host only every log_every steps (a read waits for the device).
            if step % train_config.log_every == 0 or step >= total_steps:
                loss_value = float(last_loss)
                if not math.isfinite(loss_value):
                    raise TrainingError(f"{description}: the loss became non-finite by step {step} (train.lr={train_config.lr:g}); "
                                        "lower train.lr and run again (earlier tasks are kept)")  # fmt: skip
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                if log_step is not None:
                    log_step(step, {"loss": loss_value, "lr": schedule.get_last_lr()[0]})
            bar.update(1)
            if step == warmup:  # one synchronisation per task, so the warm-up's queued work is counted in it
                _synchronize(device)
                warmup_end, warmup_examples = time.perf_counter(), examples
            if selection is not None and selection.due(step, total_steps):
                scoring = time.perf_counter()
                selection.score(model, step)
                selection_seconds[warmup_end is not None] += time.perf_counter() - scoring
                model.train()
                if freeze_batchnorm:
                    freeze_batchnorm_statistics(model)
            if step >= total_steps:
                break
    _synchronize(device)
    end = time.perf_counter()
    bar.close()
    model.eval()
    if selection is not None:
        selection.restore_best(model)
    if warmup_end is None:  # a one-step task is all warm-up
        warmup_end, warmup_examples = end, examples
    return TrainStats(steps=step, examples=examples, seconds=end - start, final_loss=loss_value,
                      warmup_seconds=warmup_end - start - selection_seconds[0], selection_seconds=sum(selection_seconds),
                      steady_seconds=end - warmup_end - selection_seconds[1], steady_examples=examples - warmup_examples)  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
