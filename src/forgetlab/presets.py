"""Presets: the two papers' protocols as named configs (big_vision's style: each one says how to run
it, what it reproduces and what it costs), every value with its source.

``forgetlab presets`` lists them, ``forgetlab presets NAME`` prints one's settings with the source of
each, and ``forgetlab presets --markdown`` writes ``docs/PRESETS.md`` (a test keeps that file equal to
this module's output, so the table cannot drift from the code). ``forgetlab run --preset NAME
[key=value ...]`` runs one, e.g. ``forgetlab run --preset paper1-vit method.rank=32 data.root=/data``.

A source is a file and line of the paper's public code (paper 1: ``AlbinSou/lora_cl_analysis``, paper 2:
``rezaakb/peft-vit``), a fact of ``docs/PROTOCOL_paper1.md`` or ``docs/PROTOCOL_paper2.md`` (read from that code, with
its file and line), or "forgetlab's choice" with the reason. Keys a preset does not set keep forgetlab's defaults
(``forgetlab config --preset NAME`` prints the whole resolved config).

Cost is the number of training images a run processes (exact) and its time at an assumed throughput:
no GPU has been available to this project to measure it, so the hours are arithmetic, not measurements.

Layout: :func:`_paper1` and :func:`_paper2` give one preset's settings; :func:`_paper1_presets` and
:func:`_paper2_presets` list each paper's presets; :data:`PRESETS` holds them all. Imports
:mod:`forgetlab.config` (a preset is a config layer) and :mod:`forgetlab.errors`; the CLI, the API and
sweeps import it (when they need a preset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgetlab.config import Layer, expand
from forgetlab.errors import ConfigError, command

P1 = "lora_cl_analysis"  # paper 1's code
P2 = "peft-vit"  # paper 2's code
PAPER1_EPOCHS = {"stanford_cars": 20, "flowers102": 60, "fgvc_aircraft": 40, "cub200": 40}
# Training images per task, in the splits paper 1's code loads; for the cost estimate only.
TRAIN_IMAGES = {"stanford_cars": 8144, "flowers102": 1020, "fgvc_aircraft": 3334, "cub200": 5994, "cifar100": 50000}
SHORT = ["stanford_cars", "flowers102", "fgvc_aircraft", "cub200"]
SECOND_ORDER = ["fgvc_aircraft", "cub200", "flowers102", "stanford_cars"]
# Test images per task (the splits above) and ImageNet's, for the evaluation part of the estimate.
TEST_IMAGES = {"stanford_cars": 8041, "flowers102": 6149, "fgvc_aircraft": 3333, "cub200": 5794, "cifar100": 10000}
IMAGENET_VAL, IMAGENET_TRAIN = 50_000, 1_281_167  # the upstream test set; the k-NN bank (ILSVRC2012 train)
BACKBONE_FROZEN = ("linear",)  # methods that leave the backbone as it was: one k-NN bank serves every row
ASSUMED_IMAGES_PER_SECOND = 1000  # ViT-B/16 training, one recent GPU (an assumption, see above)
ASSUMED_EVAL_SPEEDUP = 3  # inference (one forward pass, no gradients) against training, per image


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


@dataclass
class Preset:
    name: str
    reproduces: str
    settings: dict[str, Setting]  # dotted config key -> value and source
    notes: str = ""
    options: list[str] = field(default_factory=list)

    @property
    def tree(self) -> dict:
        """The preset as a config tree (what ``forgetlab run --preset`` starts from)."""
        return expand(
            {"name": self.name, **{key: setting.value for key, setting in self.settings.items()}}, f"preset {self.name}"
        )

    @property
    def command(self) -> str:
        return command("run", "--preset", self.name, "data.root=/path/to/datasets", *self.options)

    def training_images(self) -> int:
        train = self.tree.get("train", {})
        if train.get("max_steps"):
            return train["max_steps"] * train["batch_size"]
        total = 0
        for task in self.tree["data"]["tasks"]:
            base, *parts = task.split(":")
            share = {"samples_half1": 0.5, "samples_half2": 0.5, "samples_first80": 0.8, "samples_last20": 0.2}
            fraction = next((share[p] for p in parts if p in share), 1.0)
            total += round(TRAIN_IMAGES[base] * fraction) * train.get("task_epochs", {}).get(
                base, train.get("epochs", 1)
            )
        return total

    def evaluation_images(self) -> dict[str, int]:
        """Images passed through the model for evaluation, by kind (exact for the full datasets):
        ``upstream test`` (ImageNet val, scored at the pretrained row and after every task), ``k-NN
        bank`` (ImageNet train, once per backbone state with ``eval.upstream_evaluator=knn``: the
        pretrained one, then after every task unless the method leaves the backbone frozen), ``task
        tests`` (row i scores every task seen so far, runner.score_phase) and ``model selection``
        (``train.select=best`` scores the task's test set every ``train.eval_every`` steps)."""
        tree, train = self.tree, self.tree.get("train", {})
        tasks = tree["data"]["tasks"]
        columns = [":".join(part for part in task.split(":") if not part.startswith("samples_")) for task in tasks]
        test = lambda column: TEST_IMAGES[column.split(":")[0]]  # noqa: E731
        knn = tree.get("eval", {}).get("upstream_evaluator") == "knn"
        banks = (1 if tree.get("method", {}).get("name") in BACKBONE_FROZEN else len(tasks) + 1) if knn else 0
        selection = 0
        if train.get("select") == "best":
            for task in tasks:
                steps = train.get("max_steps") or self._steps(task)
                selection += steps // train.get("eval_every", 500) * test(task)
        return {
            "upstream test": IMAGENET_VAL * (len(tasks) + 1),
            "k-NN bank": IMAGENET_TRAIN * banks,
            "task tests": sum(
                test(column) for row in range(1, len(tasks) + 1) for column in dict.fromkeys(columns[:row])
            ),
            "model selection": selection,
        }

    def _steps(self, task: str) -> int:
        train = self.tree.get("train", {})
        base = task.split(":")[0]
        return -(-TRAIN_IMAGES[base] // train.get("batch_size", 64)) * train.get("task_epochs", {}).get(
            base, train.get("epochs", 1)
        )

    @property
    def expected_time(self) -> str:
        images, evaluated = self.training_images(), self.evaluation_images()
        hours = (images + sum(evaluated.values()) / ASSUMED_EVAL_SPEEDUP) / ASSUMED_IMAGES_PER_SECOND / 3600
        banks = evaluated["k-NN bank"] // IMAGENET_TRAIN
        parts = [f"ImageNet val {evaluated['upstream test']:,}"]
        parts += [f"k-NN bank {banks} x {IMAGENET_TRAIN:,} (ImageNet train)"] if banks else []
        parts += [f"task tests {evaluated['task tests']:,}"]
        parts += [f"model selection {evaluated['model selection']:,}"] if evaluated["model selection"] else []
        return (
            f"{images:,} training and {sum(evaluated.values()):,} evaluated images "
            f"({'; '.join(parts)}); about {hours:.1f} h at an assumed {ASSUMED_IMAGES_PER_SECOND:,} "
            f"training img/s, evaluation {ASSUMED_EVAL_SPEEDUP}x faster (not measured)"
        )

    def table(self) -> list[tuple[str, str, str]]:
        """``(key, value, source)`` for every setting."""
        return [
            (key, repr(s.value) if not isinstance(s.value, str) else s.value, s.source)
            for key, s in self.settings.items()
        ]


# ---------------------------------------------------------------------------------------------- paper 1
def _paper1(
    backbone: str, tasks: list[str], *, order: str, method: str = "lora", lwf: bool = False
) -> dict[str, Setting]:
    """Paper 1's settings for ``backbone`` on ``tasks`` (in ``order``, the order's source): the shared
    protocol, then the method's (``lora`` or ``fullrank``) and LwF's keys."""
    return {**_paper1_protocol(backbone, tasks, order, method), **_paper1_method(backbone, method), **_paper1_lwf(lwf)}


def _paper1_protocol(backbone: str, tasks: list[str], order: str, method: str) -> dict[str, Setting]:
    """What every paper-1 run shares: backbone, data, preprocessing, training recipe and evaluation."""
    vit = backbone.startswith("vit")
    return {
        "backbone.name": Setting(backbone, f"{P1} config/model/{'timvit1k' if vit else 'timresnet501k'}.yaml:1"),
        "precision": Setting("fp32", "docs/PROTOCOL_paper1.md (precision): no mixed precision in the code"),
        "data.upstream": Setting(
            "imagenet", f"{P1} src/factories/benchmark_factory.py:157 (ImageNet val, scored after every task)"
        ),
        "data.tasks": Setting(tasks, order),
        "data.workers": Setting(8, "forgetlab's choice: decoding workers do not change results"),
        "preprocess.train_scale": Setting(
            [0.08, 1.0], f"{P1} experiments/lora_forget.py:262 (timm create_transform, default scale)"
        ),
        "preprocess.color_jitter": Setting(
            0.4, f"{P1} experiments/lora_forget.py:262 (timm create_transform, default color_jitter)"
        ),
        "preprocess.hflip": Setting(0.5, f"{P1} experiments/lora_forget.py:262 (timm create_transform, default hflip)"),
        "preprocess.eval_crop": Setting(
            "center", f"{P1} experiments/lora_forget.py:263 (timm eval transform: resize, centre crop)"
        ),
        "preprocess.upstream_eval": Setting(
            "backbone", f"{P1} experiments/lora_forget.py:263 (one eval transform for every task)"
        ),
        "train.optimizer": Setting("adamw", f"{P1} experiments/lora_forget.py:292"),
        "train.lr": Setting(1e-3, f"{P1} config/optimizer/{'lora' if method == 'lora' else 'lora_full'}.yaml:1"),
        "train.weight_decay": Setting(
            1e-2 if method == "lora" else 0.0,
            f"{P1} config/optimizer/{'lora' if method == 'lora' else 'lora_full'}.yaml:2",
        ),
        "train.batch_size": Setting(32, f"{P1} config/strategy/lora.yaml:1"),
        "train.epochs": Setting(20, "unused: every task has its own count (train.task_epochs)"),
        "train.task_epochs": Setting(
            dict(PAPER1_EPOCHS),
            f"{P1} config/strategy/lora.yaml:2 ([0, 20, 60, 40, 40]; a long-setting half "
            f"gets its dataset's count, benchmark_factory.py:227)",
        ),
        "train.schedule": Setting(
            "hf_cosine",
            f"{P1} experiments/lora_forget.py:358-375 (transformers' cosine with warm-up over "
            "(N // 32) x epochs steps, stepped every iteration)",
        ),
        "train.warmup_fraction": Setting(1 / 18, f"{P1} experiments/lora_forget.py:359 (steps // 18)"),
        "train.drop_last": Setting(
            False,
            "forgetlab's reading of the code: Avalanche's training loader keeps the last partial batch, "
            "so ceil(N / 32) x epochs iterations run against a (N // 32) x epochs schedule",
        ),
        "train.select": Setting(
            "last",
            f"{P1} experiments/lora_forget.py:104 (eval_every=-1: "
            f"no model selection, every number after the last step)",
        ),
        "eval.upstream_evaluator": Setting(
            "head", f"{P1} experiments/lora_forget.py:130, 204 (the ImageNet head, frozen)"
        ),
        "eval.batch_size": Setting(
            256,
            "forgetlab's choice (the code: 64, config/strategy/lora.yaml:3): batch size does not change predictions",
        ),
    }


def _paper1_method(backbone: str, method: str) -> dict[str, Setting]:
    """The ``method.*`` keys: paper 1's merged LoRA, or its full-rank comparison."""
    vit = backbone.startswith("vit")
    if method == "lora":
        return {
            "method.name": Setting("lora", f"{P1} config/experiment/lora_experiment.yaml:11 (mode: merge)"),
            "method.rank": Setting(
                32 if vit else 1,
                f"{P1} config/strategy/lora.yaml:6 (32); the sweeps vary it: ViT 1, 2, 4, 6, 8, 16, 32 "
                f"(scripts/lora_vit_seeds.sh:5), ResNet 1-7 (docs/PROTOCOL_paper1.md)"
                if vit
                else "docs/PROTOCOL_paper1.md (ranks): ResNet ranks 1 to 7; figure 5 uses rank 1",
            ),
            "method.alpha": Setting(
                None, f"{P1} scripts/lora_vit_seeds.sh:7 (lora_alpha = 2 x rank; None means 2 x rank)"
            ),
            "method.dropout": Setting(0.1, f"{P1} experiments/lora_forget.py:81"),
            "method.targets": Setting(
                "default", f"{P1} experiments/lora_forget.py:69 (blocks.*.attn.qkv), :74 (layer*.*.conv3)"
            ),
            "method.policy": Setting(
                "merge", f"{P1} experiments/lora_forget.py:145, 223 (merge_and_unload after every task)"
            ),
        }
    return {
        "method.name": Setting("fullrank", f"{P1} config/experiment/lora_full.yaml:11 (mode: full)"),
        "method.targets": Setting(
            "default",
            f"{P1} experiments/lora_forget.py:39 (blocks.*.attn.qkv.weight), :44 (layer*.*.conv3.weight)",
        ),
    }


def _paper1_lwf(lwf: bool) -> dict[str, Setting]:
    """The ``lwf.*`` keys: off, or paper 1's LwF (alpha 5, T 2, earlier heads trained through it)."""
    settings = {
        "lwf.alpha": Setting(
            5.0 if lwf else 0.0,
            f"{P1} config/strategy/lora.yaml:9"
            if lwf
            else f"{P1} config/strategy/lora.yaml:8 (name: finetune, no LwF)",
        )
    }
    if lwf:
        settings["lwf.temperature"] = Setting(2.0, f"{P1} config/strategy/lora.yaml:10")
        settings["lwf.train_earlier_heads"] = Setting(
            True, "docs/PROTOCOL_paper1.md (LwF): earlier heads stay in AdamW and LwF's term trains them"
        )
    return settings


ORDER_1 = f"{P1} src/factories/benchmark_factory.py:140-175 (ImageNet -> Cars -> Flowers -> Aircraft -> CUB)"
ORDER_2 = f"{P1} src/factories/benchmark_factory.py:181-220 (the second order, Aircraft -> CUB -> Flowers -> Cars)"
ORDER_LONG = (
    f"{P1} src/factories/benchmark_factory.py:269-291 (each training "
    f"set split into two seeded random halves of its samples, "
    "the sequence run twice, the same task and head each time)"
)
RSLORA = Setting(
    "rslora",
    "forgetlab's extension: rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732), scale alpha / sqrt(r) "
    "with paper 1's alpha = 2r, i.e. 2 sqrt(r) instead of 2; PEFT's use_rslora",
)
DORA = Setting(
    True,
    "forgetlab's extension: DoRA (Liu et al., 2024, arXiv:2402.09353), a trainable magnitude per output "
    "row of qkv, merged with the direction after every task; PEFT's use_dora",
)
VARIANT_NOTE = (
    " The variant is forgetlab's, not paper 1's: every other setting is paper 1's, so the run differs from paper1-vit "
    "in that one key; sweeps/paper1_fig1_variants.yaml runs figure 1's ranks under each."
)
PAPER1_NOTE = (
    "Seeds: 0, 1, 2, 3 (seed=N; config/experiment/lora_defaults.yaml:2 and scripts/lora_vit_seeds.sh:3). "
    "Splits as the code loads them: Flowers102 trnid only (1,020), FGVC-Aircraft 'train' (3,334), CUB "
    "cropped to its boxes (flowers102:trainval, fgvc_aircraft:trainval and cub200:nocrop name the "
    "alternatives). BatchNorm statistics stay frozen (lora_forget.py:150; always so in forgetlab)."
)


# ---------------------------------------------------------------------------------------------- paper 2
# Line numbers of the settings in paper 2's config files, by kind (a block config has an extra 'split'
# line, a LoRA config two 'lora_*' lines).
_P2_LINES = {
    "plain": {"optimizer": 15, "weight_decay": 18, "warmup": 20, "dataset": 22, "batch": 25, "checkpoint": "29-31"},
    "block": {"optimizer": 15, "weight_decay": 19, "warmup": 21, "dataset": 23, "batch": 26, "checkpoint": "30-32"},
    "lora": {"optimizer": 15, "weight_decay": 18, "warmup": 20, "dataset": 24, "batch": 27, "checkpoint": "31-32"},
}


def _paper2(key: str, method: dict[str, Setting], lr: float, lr_source: str) -> dict[str, Setting]:
    config = f"{P2} configs/{key}"
    linear = key.startswith("linear")
    line = _P2_LINES[key.split("/")[0] if key.split("/")[0] in ("block", "lora") else "plain"]
    return {
        "backbone.name": Setting("vit_base_patch16_224.dino", f"{config}:13 (vit-b16-224-dino)"),
        "backbone.num_classes": Setting(
            0, "forgetlab's choice: DINO has no ImageNet head; the upstream task is scored by k-NN"
        ),
        "precision": Setting("tf32", "docs/PROTOCOL_paper2.md (precision): fp32, with TF32 matmuls allowed"),
        "data.upstream": Setting(
            "imagenet", f"{P2} src/eval_knn.py:52-53 (ImageNet-1k: the train set is the k-NN bank, val the queries)"
        ),
        "data.tasks": Setting(["cifar100"], f"{config}:{line['dataset']}"),
        "data.workers": Setting(8, "forgetlab's choice: decoding workers do not change results"),
        **{f"method.{k}": v for k, v in method.items()},
        "preprocess.train_scale": Setting([0.08, 1.0], f"{P2} src/data.py:86-87, 168-171"),
        "preprocess.train_interpolation": Setting("bilinear", f"{P2} src/data.py:168 (RandomResizedCrop's default)"),
        "preprocess.hflip": Setting(0.5, f"{P2} src/data.py:88, 172"),
        "preprocess.color_jitter": Setting(0.0, f"{P2} src/data.py:89, 175 (RandAugment with 0 ops: no colour change)"),
        "preprocess.eval_crop": Setting("squash", f"{P2} src/data.py:183-185 (Resize((224, 224)), no crop)"),
        "preprocess.crop_pct": Setting(1.0, f"{P2} src/data.py:183-185 (the whole image)"),
        "preprocess.eval_interpolation": Setting("bilinear", f"{P2} src/data.py:183 (Resize's default)"),
        "preprocess.mean": Setting([0.5, 0.5, 0.5], f"{P2} src/data.py:93"),
        "preprocess.std": Setting([0.5, 0.5, 0.5], f"{P2} src/data.py:94"),
        "preprocess.upstream_eval": Setting("backbone", f"{P2} src/eval_knn.py:46-51 (bicubic, ImageNet mean/std)"),
        "preprocess.upstream_crop_pct": Setting(0.875, f"{P2} src/eval_knn.py:47-48 (resize 256 -> centre crop 224)"),
        "train.optimizer": Setting("sgd", f"{config}:{line['optimizer']} (momentum 0.9, :17)"),
        "train.lr": Setting(lr, lr_source),
        "train.weight_decay": Setting(0.0, f"{config}:{line['weight_decay']}"),
        "train.batch_size": Setting(128, f"{config}:{line['batch']}"),
        "train.epochs": Setting(26, "forgetlab's choice: enough epochs for max_steps (10,000 x 128 / 50,000 = 25.6)"),
        "train.max_steps": Setting(10_000, f"{config}:10"),
        "train.schedule": Setting("hf_cosine", f"{P2} src/model.py:345-349 (transformers' cosine with warm-up)"),
        "train.warmup_steps": Setting(100 if linear else 500, f"{config}:{line['warmup']}"),
        "train.drop_last": Setting(True, f"{P2} src/data.py:232 (drop_last=True)"),
        "train.select": Setting(
            "best",
            f"{config}:{line['checkpoint']} (ModelCheckpoint on val_acc, mode max; the test set is the validation set)",
        ),
        "train.eval_every": Setting(250 if linear else 500, f"{config}:11 (val_check_interval)"),
        "eval.upstream_evaluator": Setting("knn", f"{P2} src/eval_knn.py:157-158, 219 (DINO's weighted k-NN)"),
        "eval.knn_k": Setting(
            20, f"{P2} src/eval_knn.py:270 (k in 10, 20, 100, 200; k = 20 gives DINO ViT-B/16's published 76.1 %)"
        ),
        "eval.knn_temperature": Setting(0.07, f"{P2} src/eval_knn.py:272 (votes exp(similarity / 0.07))"),
        "eval.knn_features": Setting(
            "backbone",
            "forgetlab's choice: backbone features (correct); task_logits reproduces the published LoRA rows",
        ),
        "eval.batch_size": Setting(256, "forgetlab's choice: batch size does not change predictions"),
    }


PAPER2_NOTE = (
    "The published numbers come from the checkpoint with the best CIFAR-100 test accuracy (scored every {every} "
    "steps): the test set doubles as validation, so they are optimistic (train.select=last for the honest number)."
)


P1_VIT, P1_RESNET = "vit_base_patch16_224.augreg_in1k", "resnet50.a1_in1k"  # paper 1's backbones


def _paper1_presets() -> list[Preset]:
    """Paper 1's presets (two backbones, two orders, the long settings, LwF, full rank), then its LoRA variants."""
    return [
        *_paper1_order_presets(),
        *_paper1_long_presets(),
        *_paper1_comparison_presets(),
        *_paper1_variant_presets(),
    ]


def _paper1_order_presets() -> list[Preset]:
    """The short setting in paper 1's two task orders, both backbones (figure 1)."""
    vit, resnet = P1_VIT, P1_RESNET
    return [
        Preset(
            "paper1-vit",
            "paper 1, short setting, ViT-B/16 (figure 1, blue)",
            _paper1(vit, SHORT, order=ORDER_1),
            PAPER1_NOTE,
            ["method.rank=32", "seed=0"],
        ),
        Preset(
            "paper1-resnet",
            "paper 1, short setting, ResNet-50 (figure 1, green)",
            _paper1(resnet, SHORT, order=ORDER_1),
            PAPER1_NOTE,
            ["method.rank=1", "seed=0"],
        ),
        Preset(
            "paper1-vit-order2",
            "paper 1, second task order, ViT-B/16",
            _paper1(vit, SECOND_ORDER, order=ORDER_2),
            PAPER1_NOTE,
        ),
        Preset(
            "paper1-resnet-order2",
            "paper 1, second task order, ResNet-50",
            _paper1(resnet, SECOND_ORDER, order=ORDER_2),
            PAPER1_NOTE,
        ),
    ]


def _paper1_long_presets() -> list[Preset]:
    """Paper 1's long setting (each dataset in two halves, the sequence run twice) and its 80/20 variant."""
    vit, resnet = P1_VIT, P1_RESNET
    long = [f"{t}:samples_half1" for t in SHORT] + [f"{t}:samples_half2" for t in SHORT]
    long80 = [f"{t}:samples_first80" for t in SHORT] + [f"{t}:samples_last20" for t in SHORT]
    return [
        Preset(
            "paper1-vit-long",
            "paper 1, long setting: every dataset's first half of samples, then the second halves (ViT-B/16)",
            _paper1(vit, long, order=ORDER_LONG),
            PAPER1_NOTE + " Rows are the 8 phases, columns the 4 tasks.",
        ),
        Preset(
            "paper1-resnet-long",
            "paper 1, long setting, ResNet-50",
            _paper1(resnet, long, order=ORDER_LONG),
            PAPER1_NOTE,
        ),
        Preset(
            "paper1-vit-long-80-20",
            "paper 1, long setting's 80/20 variant: 80 % of every dataset's samples, then the other 20 %",
            _paper1(
                vit,
                long80,
                order=f"{P1} src/factories/benchmark_factory.py:311-316 (the 80/20 variant); the split is forgetlab's, "
                "see forgetlab.data.registry",
            ),
            PAPER1_NOTE,
        ),
    ]


def _paper1_comparison_presets() -> list[Preset]:
    """Paper 1's comparisons on the short setting: LwF (figure 2) and full-rank training of LoRA's targets."""
    vit, resnet = P1_VIT, P1_RESNET
    return [
        Preset(
            "paper1-vit-lwf",
            "paper 1, short setting with LwF (alpha 5, T 2; figure 2), ViT-B/16",
            _paper1(vit, SHORT, order=ORDER_1, lwf=True),
            PAPER1_NOTE,
            ["method.rank=32"],
        ),
        Preset(
            "paper1-resnet-lwf",
            "paper 1, short setting with LwF, ResNet-50",
            _paper1(resnet, SHORT, order=ORDER_1, lwf=True),
            PAPER1_NOTE,
        ),
        Preset(
            "paper1-vit-fullrank",
            "paper 1's full-rank comparison: the qkv weights trained directly, ViT-B/16",
            _paper1(vit, SHORT, order=ORDER_1, method="fullrank"),
            PAPER1_NOTE,
        ),
        Preset(
            "paper1-resnet-fullrank",
            "paper 1's full-rank comparison: the conv3 weights trained directly, ResNet-50",
            _paper1(resnet, SHORT, order=ORDER_1, method="fullrank"),
            PAPER1_NOTE,
        ),
    ]


def _paper1_variant_presets() -> list[Preset]:
    """forgetlab's LoRA variants on paper 1's short setting (not in the paper): rsLoRA and DoRA."""
    vit = P1_VIT
    return [
        Preset(
            "paper1-vit-rslora",
            "forgetlab's extension of paper 1 (not in the paper): its short setting, ViT-B/16, with rsLoRA's "
            "scaling alpha / sqrt(r)",
            _paper1(vit, SHORT, order=ORDER_1) | {"method.scaling": RSLORA},
            PAPER1_NOTE + VARIANT_NOTE,
            ["method.rank=32", "seed=0"],
        ),
        Preset(
            "paper1-vit-dora",
            "forgetlab's extension of paper 1 (not in the paper): its short setting, ViT-B/16, with DoRA's "
            "magnitude and direction",
            _paper1(vit, SHORT, order=ORDER_1) | {"method.dora": DORA},
            PAPER1_NOTE + VARIANT_NOTE,
            ["method.rank=32", "seed=0"],
        ),
    ]


def _readme_row(label: str) -> str:
    """The source of a value read from a row of paper 2's README table."""
    return f"{P2} README.md, row '{label}'"


def _paper2_lora(r: int) -> dict[str, Setting]:
    """Paper 2's LoRA of rank ``r`` on q and v (the ``method.*`` settings)."""
    return {
        "name": Setting("lora", f"{P2} configs/lora/cifar100-r{r}-lr-*.yaml:14 (training_mode: lora)"),
        "rank": Setting(r, f"{P2} configs/lora/cifar100-r{r}-lr-*.yaml:21"),
        "alpha": Setting(float(r), f"{P2} configs/lora/cifar100-r{r}-lr-*.yaml:22 (lora_alpha = r: scaling 1)"),
        "dropout": Setting(0.0, f"{P2} src/model.py:63"),
        "targets": Setting("q,v", f"{P2} src/model.py:62 (query, value)"),
        "policy": Setting("merge", "forgetlab's choice: one task, so merge and keep score alike"),
    }


def _paper2_block(p: int, split: int, file: str) -> dict[str, Setting]:
    """Paper 2's Block Expansion with ``p`` copies, one after every ``split`` blocks (config
    ``configs/block/<file>``)."""
    return {
        "name": Setting("block_expansion", f"{P2} configs/block/{file}:14 (training_mode: block)"),
        "copies": Setting(p, f"{P2} README.md:{109 + p} (the table's row p={p})"),
        "split": Setting(
            split, f"{P2} configs/block/{file}:17 and src/utils.py:12 (a copy after block i when (i + 1) % split == 0)"
        ),
    }


# Paper 2's table, one row per preset (README.md's table; configs/<method>/cifar100*.yaml).
_LR_CHOICE = "forgetlab's choice: configs exist at 0.005 and 0.05 and the README does not say which made the row; "
PAPER2_ROWS = [  # key, config file, method settings, lr, lr source, the table's label, extra note
    (
        "full",
        "full/cifar100-lr=0.005.yaml",
        {"name": Setting("full", f"{P2} configs/full/cifar100-lr=0.005.yaml:14")},
        0.005,
        _readme_row("All") + ": configs/full/cifar100-lr=0.005.yaml:16",
        "full fine-tuning (85.9 M)",
        "",
    ),
    (
        "top3",
        "add_three/cifar100-lr=0.005.yaml",
        {
            "name": Setting(
                "topk",
                "docs/PROTOCOL_paper2.md (top-3): not implemented in "
                "the public code; forgetlab trains the last 3 blocks",
            ),
            "k": Setting(3, f"{P2} README.md:95 (row Top-3: 21.3 M = 3 blocks + the classifier)"),
        },
        0.005,
        _readme_row("Top-3") + ": configs/add_three/cifar100-lr=0.005.yaml:16",
        "top-3 blocks (21.3 M)",
        " Top-3 is not defined by the public code (its config's training_mode 'add_three' "
        "exists nowhere in src/): forgetlab trains the last 3 blocks and the final norm.",
    ),
    (
        "linear",
        "linear/cifar100-lr=0.005.yaml",
        {"name": Setting("linear", f"{P2} configs/linear/cifar100-lr=0.005.yaml:14")},
        0.005,
        _readme_row("Linear") + ": configs/linear/cifar100-lr=0.005.yaml:16",
        "linear probing (76.9 K)",
        "",
    ),
    (
        "lora-r4",
        "lora/cifar100-r4-lr-0.05.yaml",
        _paper2_lora(4),
        0.05,
        _readme_row("r=4") + ": configs/lora/cifar100-r4-lr-0.05.yaml:16",
        "LoRA r=4 on q, v",
        "",
    ),
    (
        "lora-r8",
        "lora/cifar100-r8-lr-0.005.yaml",
        _paper2_lora(8),
        0.005,
        _readme_row("r=8") + ": configs/lora/cifar100-r8-lr-0.005.yaml:16",
        "LoRA r=8 on q, v",
        "",
    ),
    (
        "lora-r16",
        "lora/cifar100-r16-lr-0.05.yaml",
        _paper2_lora(16),
        0.05,
        _readme_row("r=16") + ": configs/lora/cifar100-r16-lr-0.05.yaml:16",
        "LoRA r=16 on q, v",
        "",
    ),
    (
        "block-p1",
        "block/cifar100-lr=0.005-s11.yaml",
        _paper2_block(1, 11, "cifar100-lr=0.005-s11.yaml"),
        0.005,
        _LR_CHOICE + "0.005 as for p=2, the one row whose config is linked",
        "Block Expansion p=1",
        " train.lr=0.05 runs the other config (configs/block/cifar100-lr=0.05-s11.yaml).",
    ),
    (
        "block-p2",
        "block/cifar100-lr=0.005-s6.yaml",
        _paper2_block(2, 6, "cifar100-lr=0.005-s6.yaml"),
        0.005,
        f"{P2} configs/block/cifar100-lr=0.005-s6.yaml:16",
        "Block Expansion p=2",
        "",
    ),
    (
        "block-p3",
        "block/cifar100.yaml",
        _paper2_block(3, 4, "cifar100.yaml"),
        0.05,
        _LR_CHOICE + "0.05, the value of configs/block/cifar100.yaml:16, the split-4 config without a suffix",
        "Block Expansion p=3",
        " train.lr=0.005 runs the other config (configs/block/cifar100-lr=0.005.yaml).",
    ),
    (
        "block-p4",
        "block/cifar100-lr=0.005-s3.yaml",
        _paper2_block(4, 3, "cifar100-lr=0.005-s3.yaml"),
        0.005,
        _LR_CHOICE + "0.005 as for p=2, the one row whose config is linked",
        "Block Expansion p=4",
        " train.lr=0.05 runs the other config (configs/block/cifar100-lr=0.05-s3.yaml).",
    ),
]


def _paper2_presets() -> list[Preset]:
    """Paper 2's table, one preset per row: the method's settings, its learning rate and its note."""
    presets = []
    for key, config_file, method, lr, lr_source, label, extra_note in PAPER2_ROWS:
        settings = _paper2(config_file, method, lr, lr_source)
        note = PAPER2_NOTE.format(every=250 if key == "linear" else 500) + extra_note
        if key.startswith("lora"):
            note += (
                " The published LoRA rows scored the k-NN on the 100-d CIFAR classifier outputs (a bug of the code): "
                "eval.knn_features=task_logits reproduces them."
            )
        presets.append(
            Preset(
                f"paper2-{key}",
                f"paper 2's table, row '{label}': DINO ViT-B/16 on CIFAR-100, ImageNet k-NN",
                settings,
                note,
            )
        )
    return presets


def _build() -> dict[str, Preset]:
    """Every preset by name: paper 1's, then paper 2's (the order ``forgetlab presets`` lists them)."""
    return {preset.name: preset for preset in [*_paper1_presets(), *_paper2_presets()]}


PRESETS = _build()


def preset_tree(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; 'forgetlab presets' lists them")
    return PRESETS[name].tree


def preset_layer(name: str, run_name: bool = True) -> Layer:
    """A preset as the bottom config layer (:class:`forgetlab.config.Layer`); ``run_name=False`` leaves
    out its ``name`` (a sweep's cells have their own)."""
    tree = preset_tree(name)
    if not run_name:
        tree.pop("name")
    return Layer(f"preset {name}", tree)


def markdown() -> str:
    """``docs/PRESETS.md``: every preset, its command, cost, note and settings with their sources."""
    lines = [
        "# Presets",
        "",
        "Generated by `forgetlab presets --markdown` from `src/forgetlab/presets.py` (a test keeps them equal).",
        "Paper 1's code is [AlbinSou/lora_cl_analysis](https://github.com/AlbinSou/lora_cl_analysis/tree/dec7d3a) "
        "(`lora_cl_analysis` below), paper 2's [rezaakb/peft-vit](https://github.com/rezaakb/peft-vit/tree/5095e75) "
        "(`peft-vit`); file:line refer to them at those commits, and [PROTOCOL_paper1.md](PROTOCOL_paper1.md) and "
        "[PROTOCOL_paper2.md](PROTOCOL_paper2.md) hold the protocols as facts with their sources. Keys a preset "
        "does not set keep forgetlab's defaults (`forgetlab config --preset NAME` prints the whole config).",
        "",
    ]
    for preset in PRESETS.values():
        lines += [
            f"## {preset.name}",
            "",
            f"Reproduces: {preset.reproduces}.",
            "",
            f"    {preset.command}",
            "",
            f"Cost: {preset.expected_time}.",
            "",
        ]
        if preset.notes:
            lines += [f"Note: {preset.notes}", ""]
        lines += ["| key | value | source |", "|---|---|---|"]
        lines += [f"| `{key}` | `{value}` | {source} |" for key, value, source in preset.table()]
        lines.append("")
    return "\n".join(lines)
