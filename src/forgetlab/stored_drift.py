"""Drift of a finished LoRA run, afterwards: the rows :mod:`forgetlab.run_drift` writes while a run
runs, rebuilt from the run's stored adapters into ``explain/drift.csv``. :func:`drift_of_run` is the
function ``forgetlab explain`` calls for its drift part.

Imports the run floor's :mod:`forgetlab.run_drift` and :mod:`forgetlab.runner` (the upstream test set
exactly as the run scored it), and models below them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, DataError
from forgetlab.models import lora_layers
from forgetlab.models.adapter_files import load_adapter
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.pretrain import ensure_pretrained
from forgetlab.results import RunFolder, atomic_write_text
from forgetlab.run_drift import DRIFT_FILE, build_drift, format_rows
from forgetlab.runner import upstream_task
from forgetlab.runtime import Runtime


def drift_of_run(run_dir: str | Path, *, device: str = "auto", probe_images: int | None = None, log=print) -> Path:
    """The drift of every finished phase of a finished or stopped LoRA run (``method.policy=merge``),
    rebuilt from its stored adapters: the pretrained backbone, then each phase's adapter merged in turn
    (fp32, the run's own merge). Written to ``explain/drift.csv`` in the run folder (same columns as
    ``drift.csv``); returns its path. ``probe_images`` defaults to the run's ``eval.probe_images``
    (2,000 when that is 0). Raises :class:`DataError` for a folder without finished phases and
    :class:`ConfigError` for a run of another method."""
    folder = RunFolder(run_dir)
    if not folder.config.exists() or not folder.progress.exists():
        raise DataError(f"{folder.path} is not a run folder with finished tasks; give a folder 'forgetlab run' wrote")
    config = config_module.load_stored(folder.config)
    if config.method.name != "lora" or config.method.policy != "merge":
        raise ConfigError(
            f"{folder.path} is a {config.method.name} run; drift from stored adapters needs method.name=lora "
            "with method.policy=merge (other runs write drift.csv while they run: eval.probe_images)"
        )
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
    for index, phase in enumerate(folder.read_matrix().phases[: folder.completed_tasks()], start=1):
        for name, layer in load_adapter(folder.path / "adapters" / phase, backbone.model).items():
            backbone.model.set_submodule(name, layer)
        lora_layers.merge_lora(backbone.model)
        model.to(torch_device)
        rows += probe.rows(model, index)
    target = folder.path / "explain" / DRIFT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, format_rows(rows))
    log(f"drift of {len(rows)} unit-phase pairs -> {target}")
    return target
