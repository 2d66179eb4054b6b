"""Drift of a finished run, afterwards: the rows :mod:`forgetlab.run_drift` writes while a run runs,
rebuilt from the run's stored adapters (LoRA, ``method.policy=merge``) or its stored per-phase updates
(any other method with ``save.updates=true``) into ``explain/drift.csv``. :func:`drift_of_run` is the
function ``forgetlab explain`` calls for its drift part (``--parts drift``).

Imports the run floor's :mod:`forgetlab.run_drift` and :mod:`forgetlab.runner` (the upstream test set
exactly as the run scored it), and models below them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, DataError
from forgetlab.explanation.updates import check_explainable, rebuild
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.pretrain import ensure_pretrained
from forgetlab.results import RunFolder, atomic_write_text
from forgetlab.run_drift import DRIFT_FILE, build_drift, format_rows
from forgetlab.runner import upstream_task
from forgetlab.runtime import Runtime


def drift_of_run(run_dir: str | Path, *, device: str = "auto", probe_images: int | None = None, log=print) -> Path:
    """The drift of every finished phase of a finished or stopped run, rebuilt phase after phase on the
    pretrained backbone (:func:`forgetlab.explanation.updates.rebuild`: a LoRA run's adapters merged in
    turn, fp32, the run's own merge; another method's ``updates/<phase>.safetensors`` added exactly, block
    expansion's blocks inserted as the run inserted them). Written to ``explain/drift.csv`` in the run
    folder (same columns as ``drift.csv``); returns its path. ``probe_images`` defaults to the run's
    ``eval.probe_images`` (2,000 when that is 0). Raises :class:`DataError` for a folder without finished
    phases and :class:`ConfigError` for a run whose phases cannot be rebuilt (LoRA kept apart,
    ``method.policy=keep``; another method without ``save.updates=true``)."""
    folder = RunFolder(run_dir)
    if not folder.config.exists() or not folder.progress.exists():
        raise DataError(f"{folder.path} is not a run folder with finished tasks; give a folder 'forgetlab run' wrote")
    config = config_module.load_stored(folder.config)
    if config.method.name == "lora" and config.method.policy != "merge":
        raise ConfigError(
            f"{folder.path} keeps its LoRA adapters apart (method.policy=keep), so the upstream features never "
            "change; drift from stored adapters needs method.policy=merge"
        )
    check_explainable(config, folder.path)
    count = probe_images if probe_images is not None else (config.eval.probe_images or 2000)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, probe_images=count))
    runtime = Runtime.from_config(config, device=device)
    torch_device = runtime.device
    ensure_pretrained(config.backbone, device=torch_device)
    backbone = load_backbone(config.backbone)
    _, upstream = upstream_task(config, backbone)
    model = MultiHeadModel(backbone.model).to(torch_device).requires_grad_(False)
    # row 0 below takes the pretrained features from model
    probe = build_drift(config, upstream.test, runtime, lambda: model, log)
    rows = probe.rows(model, 0)
    phases = folder.read_matrix().phases[: folder.completed_tasks()]
    for update in rebuild(config, backbone.model, folder.path, phases):  # the backbone holds each phase in turn
        model.to(torch_device)
        rows += probe.rows(model, update.index)
    target = folder.path / "explain" / DRIFT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, format_rows(rows))
    log(f"drift of {len(rows)} unit-phase pairs -> {target}")
    return target
