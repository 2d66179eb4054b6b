"""Pretraining the offline backbones on the offline upstream task (the stand-in for ImageNet-1k).

Deterministic: a fixed recipe and seed give the same weights on the same machine. The result is a
folder with ``model.safetensors`` (the timm model, head included) and ``recipe.json`` (the upstream
label space with its WordNet synsets, the recipe, the test accuracy and the weights' SHA-256).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetlab import paths
from forgetlab.config import TrainConfig
from forgetlab.data import build_task
from forgetlab.evaluate import head_evaluator
from forgetlab.models.backbones import create, offline_backbone_dir
from forgetlab.models.offline import OFFLINE_BACKBONES, PRETRAIN_RECIPES, PRETRAIN_SEED
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.results import atomic_write_bytes, atomic_write_text, build_lock
from forgetlab.runtime import Runtime, autocast_dtype, configure_threads, resolve_device, seed_everything
from forgetlab.train import TaskPlan, train_task

UPSTREAM_DATASET = "offline_upstream"
RECIPES = {name: TrainConfig(**recipe) for name, recipe in PRETRAIN_RECIPES.items()}


def ensure_pretrained(backbone_config, *, device=None) -> None:
    """Pretrain the offline backbone ``backbone_config`` names, once, if ``FORGETLAB_HOME`` does not
    hold it yet; nothing for any other backbone (timm names, a weights file, ``random_init``).

    The explicit step a caller takes before :func:`forgetlab.models.backbones.load_backbone`, which
    never trains. Deterministic (see :func:`pretrain`); minutes on a CPU."""
    name = backbone_config.name
    if name not in OFFLINE_BACKBONES or backbone_config.weights is not None or backbone_config.random_init:
        return
    folder = offline_backbone_dir(name)
    if not (folder / "model.safetensors").exists():
        pretrain_once(name, device=device)


def pretrain_once(name: str, *, device=None, force: bool = False) -> bool:
    """Pretrain ``name`` into ``FORGETLAB_HOME`` unless it is there (or ``force``), holding the
    backbone's lock (:func:`forgetlab.results.build_lock`): a second process asking for the same
    backbone meanwhile waits, says for whom, and then uses the first one's weights. True when this call
    pretrained it."""
    folder = offline_backbone_dir(name)
    with build_lock(folder.with_name(f".{folder.name}.lock"), f"pretraining {name} into {folder}"):
        if (folder / "model.safetensors").exists() and not force:
            return False  # built while this process waited
        if not force:
            print(
                f"forgetlab: {name} is not in {paths.home()} yet (FORGETLAB_HOME); pretraining it once into {folder}",
                flush=True,
            )
        pretrain(name, device=device)
        return True


def pretrain(name: str, *, out_dir: Path | None = None, device=None, epochs: int | None = None) -> Path:
    """Pretrain ``name`` from scratch on the offline upstream task; return the output folder."""
    configure_threads()
    device = device or resolve_device("auto")
    runtime = Runtime(device=device, amp_dtype=autocast_dtype(device), eval_batch_size=512)
    recipe = RECIPES[name]
    if epochs is not None:
        recipe = TrainConfig(**{**recipe.__dict__, "epochs": epochs})
    overrides = {"epochs": epochs} if epochs is not None else {}
    folder = (
        Path(out_dir) if out_dir else offline_backbone_dir(name, {**PRETRAIN_RECIPES[name], **overrides})
    )  # another recipe: another folder
    where = "" if out_dir else f" (FORGETLAB_HOME is {paths.home()}: 'export FORGETLAB_HOME=...' to keep it elsewhere)"
    print(
        f"forgetlab: pretraining {name} on {UPSTREAM_DATASET} for {recipe.epochs} epochs into {folder}{where}",
        flush=True,
    )
    upstream = build_task(UPSTREAM_DATASET, None)

    seed_everything(PRETRAIN_SEED)
    model = MultiHeadModel(create(name, num_classes=upstream.num_classes)).to(device)
    plan = TaskPlan(description=f"pretrain {name}", freeze_batchnorm=False)
    stats = train_task(model, UPSTREAM, upstream.train, recipe, runtime, seed=PRETRAIN_SEED, plan=plan)
    test_accuracy = head_evaluator(model, upstream.test, runtime).accuracy

    from safetensors.torch import save

    state = {key: value.detach().cpu().contiguous() for key, value in model.backbone.state_dict().items()}
    weights = save(state)  # serialised once: written to disk and hashed for the recipe
    recipe_record = {
        "model": name,
        "upstream": UPSTREAM_DATASET,
        "classes": upstream.classes,
        "class_synsets": upstream.class_synsets,
        "class_groups": upstream.class_groups,
        "train": recipe.__dict__,
        "seed": PRETRAIN_SEED,
        "device": str(device),
        "upstream_test_accuracy": test_accuracy,
        "train_seconds": round(stats.seconds, 1),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    atomic_write_bytes(folder / "model.safetensors", weights)
    atomic_write_text(folder / "recipe.json", json.dumps(recipe_record, indent=2) + "\n")
    print(
        f"forgetlab: pretrained {name}: upstream test accuracy "
        f"{100 * test_accuracy:.2f}% in {stats.seconds:.0f}s -> {folder}",
        flush=True,
    )
    return folder
