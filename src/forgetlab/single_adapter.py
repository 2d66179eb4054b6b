"""Paper 1's "after" for contextual forgetting (figures 3-5): the **pretrained** backbone plus **only
one task's** LoRA adapter, compared with the pretrained model, rather than the sequence so far.

A LoRA run already stores every phase's adapter (``adapters/<phase>/``), so nothing is retrained: for
every finished phase the pretrained backbone is rebuilt from the run's config, that phase's adapter is
merged into it (fp32, the same checked merge as the run), and the upstream test set is predicted as
the run predicts it. The predictions go to ``predictions/upstream_single_<i>.npz`` beside the run's
own ``upstream_after_<i>.npz`` (``results.single_prediction_path``); ``forgetlab report --after single``
reads them through ``results.read_single_predictions``. Existing files are kept
(the function is a pure function of the run folder), so rerunning it only fills what is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from forgetlab import config as config_module
from forgetlab.data.base import dataset_labels
from forgetlab.errors import ConfigError, DataError
from forgetlab.evaluate import predict
from forgetlab.models import lora_layers
from forgetlab.models.adapter_files import load_adapter
from forgetlab.models.backbones import load_backbone
from forgetlab.pretrain import ensure_pretrained
from forgetlab.runner import upstream_task
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.results import RunFolder, single_prediction_path, write_npz
from forgetlab.runtime import Runtime


def single_adapter_predictions(
    run_dir: str | Path, *, device: str = "auto", batch_size: int | None = None, log=print
) -> list[Path]:
    """Write the single-adapter upstream predictions of every finished phase of a LoRA run."""
    folder = RunFolder(run_dir)
    if not folder.config.exists() or not folder.progress.exists():
        raise DataError(f"{folder.path} is not a run folder with finished tasks; give a folder 'forgetlab run' wrote")
    config = config_module.load_stored(folder.config)
    if config.method.name != "lora":
        raise ConfigError(
            f"{folder.path} is a {config.method.name} run; single-adapter "
            f"predictions need a LoRA run (method.name=lora)"
        )
    if config.eval.evaluators[0] != "head":
        raise ConfigError(
            "single-adapter predictions score the upstream head; this run scores the upstream task by k-NN"
        )
    completed = folder.completed_tasks()
    phases = folder.read_matrix().phases[:completed]
    runtime = Runtime.from_config(config, device=device)
    runtime = dataclasses.replace(runtime, eval_batch_size=batch_size or runtime.eval_batch_size)
    ensure_pretrained(config.backbone, device=runtime.device)
    backbone = load_backbone(config.backbone)
    _, upstream = upstream_task(config, backbone)  # the upstream test set exactly as the run scored it
    labels = dataset_labels(upstream.test)
    pretrained = {name: tensor.clone() for name, tensor in backbone.model.state_dict().items()}
    written = []
    for index, phase in enumerate(phases, start=1):
        target = single_prediction_path(folder, index)
        if target.exists():
            continue
        adapter = folder.path / "adapters" / phase
        backbone.model.load_state_dict(pretrained)
        for name, layer in load_adapter(adapter, backbone.model).items():
            backbone.model.set_submodule(name, layer)
        lora_layers.merge_lora(backbone.model)
        model = MultiHeadModel(backbone.model).to(runtime.device)
        predictions = predict(model, UPSTREAM, upstream.test, runtime, description=f"single adapter {phase}")
        write_npz(target, predictions=predictions, labels=labels)
        written.append(target)
        log(
            f"{phase}: pretrained + its adapter alone scores "
            f"{100 * (predictions == labels).mean():.2f}% upstream -> {target}"
        )
    return written
