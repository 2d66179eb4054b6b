"""Presets: the two papers' protocols as named configs (big_vision's style: each one says how to run
it, what it reproduces and what it costs).

``forgetlab presets`` lists them; ``forgetlab run --preset NAME [key=value ...]`` runs one, e.g.
``forgetlab run --preset paper1-vit method.rank=32 data.root=/data``. The settings are those of
``PROTOCOLS.md``; where it is silent, the choice is named in ``notes``.

Cost is given as the number of training images a run processes (exact) and its time at an assumed
throughput: no GPU has been available to this project to measure it, so the hours are arithmetic,
not measurements.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from forgetlab.errors import ConfigError

PAPER1_EPOCHS = {"stanford_cars": 20, "flowers102": 60, "fgvc_aircraft": 40, "cub200": 40}
# Training images per task (the standard splits); used for the cost estimate only.
TRAIN_IMAGES = {"stanford_cars": 8144, "flowers102": 2040, "fgvc_aircraft": 6667, "cub200": 5994, "cifar100": 50000}
SHORT = ["stanford_cars", "flowers102", "fgvc_aircraft", "cub200"]
ASSUMED_IMAGES_PER_SECOND = 1000  # ViT-B/16 training, bf16, one recent GPU (an assumption, see above)


@dataclass
class Preset:
    name: str
    reproduces: str
    tree: dict
    notes: str = ""
    options: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return f"forgetlab run --preset {self.name} data.root=/path/to/datasets" + "".join(f" {o}" for o in self.options)

    def training_images(self) -> int:
        train = self.tree.get("train", {})
        if train.get("max_steps"):
            return train["max_steps"] * train["batch_size"]
        total = 0
        for task in self.tree["data"]["tasks"]:
            base, _, part = task.partition(":")
            share = {"": 1.0, "half1": 0.5, "half2": 0.5, "first80": 0.8, "last20": 0.2}[part]
            total += round(TRAIN_IMAGES[base] * share) * train.get("task_epochs", {}).get(base, train.get("epochs", 1))
        return total

    @property
    def expected_time(self) -> str:
        images = self.training_images()
        evaluated = 50_000 * (len(self.tree["data"]["tasks"]) + 1)  # ImageNet val after every task
        hours = (images + evaluated / 3) / ASSUMED_IMAGES_PER_SECOND / 3600  # inference ~3x cheaper than training
        return (f"{images:,} training and {evaluated:,} ImageNet evaluation images; about {hours:.1f} h "
                f"at an assumed {ASSUMED_IMAGES_PER_SECOND:,} training img/s (not measured)")  # fmt: skip


def _paper1(backbone: str, tasks: list[str], **extra) -> dict:
    tree = {
        "backbone": {"name": backbone},
        "data": {"upstream": "imagenet", "tasks": tasks, "workers": 8},
        "method": {"name": "lora", "rank": 4, "alpha": None, "dropout": 0.1, "targets": "default"},
        "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 32, "warmup_fraction": 1 / 18,
                  "epochs": 20, "task_epochs": dict(PAPER1_EPOCHS)},
        "eval": {"upstream_evaluator": "head", "batch_size": 256},
    }  # fmt: skip
    for key, value in extra.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def _paper2(method: dict) -> dict:
    return {
        "backbone": {"name": "vit_base_patch16_224.dino", "num_classes": 0},
        "data": {"upstream": "imagenet", "tasks": ["cifar100"], "workers": 8},
        "method": method,
        "train": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "batch_size": 128, "epochs": 26,
                  "max_steps": 10_000, "warmup_fraction": 0.05},
        "eval": {"upstream_evaluator": "knn", "knn_k": 20, "knn_temperature": 0.07, "batch_size": 256},
    }  # fmt: skip


def _build() -> dict[str, Preset]:
    long = [f"{t}:half1" for t in SHORT] + [f"{t}:half2" for t in SHORT]
    rank = ["method.rank=32"]
    presets = [
        Preset("paper1-vit", "paper 1, short setting, ViT-B/16 (figure 1, blue)", _paper1("vit_base_patch16_224.augreg_in1k", SHORT), options=rank),
        Preset("paper1-resnet", "paper 1, short setting, ResNet-50 (figure 1, green)", _paper1("resnet50.a1_in1k", SHORT), options=["method.rank=1"]),
        Preset("paper1-vit-long", "paper 1, long setting: every dataset's first halves, then second halves",
               _paper1("vit_base_patch16_224.augreg_in1k", long), options=rank),
        Preset("paper1-vit-lwf", "paper 1, short setting with LwF (alpha 5, T 2; figure 2)",
               _paper1("vit_base_patch16_224.augreg_in1k", SHORT, lwf={"alpha": 5.0, "temperature": 2.0}), options=rank),
    ]  # fmt: skip
    paper2_note = "PROTOCOLS.md gives SGD, 10,000 steps, batch 128, 500 warm-up steps but no learning rate; 0.01 is our choice."
    paper2 = [
        ("full", {"name": "full"}, "full fine-tuning (85.9 M)"),
        ("top3", {"name": "topk", "k": 3}, "top-3 blocks (21.3 M)"),
        ("linear", {"name": "linear"}, "linear probing (76.9 K)"),
        *[(f"lora-r{r}", {"name": "lora", "rank": r, "targets": "q,v", "policy": "merge"}, f"LoRA r={r} on q, v") for r in (4, 8, 16)],
        *[(f"block-p{p}", {"name": "block_expansion", "copies": p}, f"Block Expansion p={p}") for p in (1, 2, 3, 4)],
    ]
    presets += [Preset(f"paper2-{key}", f"paper 2's table, row '{label}': DINO ViT-B/16 on CIFAR-100, ImageNet k-NN", _paper2(method),
                       notes=paper2_note) for key, method, label in paper2]  # fmt: skip
    for preset in presets:
        preset.tree.setdefault("name", preset.name)
    return {preset.name: preset for preset in presets}


PRESETS = _build()


def preset_tree(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; 'forgetlab presets' lists them")
    return copy.deepcopy(PRESETS[name].tree)
