"""Typed run configs: dataclasses whose fields carry help text, read from YAML with ``key=value``
overrides on top. Unknown keys, wrong types and invalid values are :class:`ConfigError` s that name
the key and the fix. The method section is polymorphic: ``method.name`` picks the method, and the other
keys of that section are checked against that method's own config dataclass (see
:mod:`forgetlab.methods`), so a config never carries keys its method ignores.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from forgetlab.errors import ConfigError
from forgetlab.evaluators import evaluator_names
from forgetlab.methods.base import Checked, choices_of, literal_choices  # noqa: F401 (choices_of, literal_choices: for callers)


def option(default, help: str, **kwargs):
    """A dataclass field with help text (shown by ``forgetlab config``). A key that takes one of a few
    names says so by its type, ``Literal[...]`` (``Literal[...] | None`` where ``None`` stays allowed),
    which its section checks when it is built (:class:`~forgetlab.methods.base.Checked`)."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def section(cls, help: str):
    """A nested config section, built from its own defaults."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class BackboneConfig(Checked):
    KEY: ClassVar[str] = "backbone."

    name: str = option("offline_vit", "backbone: 'offline_vit', 'offline_resnet', or a timm model name")
    weights: str | None = option(
        None, "local weights file (.safetensors or timm/torch checkpoint); default: built-in or Hugging Face"
    )
    image_size: int | None = option(
        None, "input size override (smoke runs at reduced size); default: the backbone's pretrained_cfg"
    )
    random_init: bool = option(
        False, "random weights instead of pretrained ones (smoke tests of real architectures only)"
    )
    num_classes: int | None = option(
        None, "upstream head size with random_init (default 1000; 0 for a headless backbone)"
    )
    kwargs: dict[str, Any] = option(
        {},
        "extra keyword arguments of timm.create_model (e.g. "
        "drop_path_rate, or depth and embed_dim of a tiny smoke model)",
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.image_size is None or 8 <= self.image_size <= 4096, "backbone.image_size must be in 8..4096"),
            (self.num_classes is None or self.num_classes >= 0, "backbone.num_classes must be 0 or more"),
        ]


Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS = typing.get_args(Interpolation)


@dataclass
class PreprocessConfig(Checked):
    """How real images become tensors: timm's transforms (``timm.data.create_transform``) with these
    arguments; every ``None`` takes the backbone's own ``pretrained_cfg`` value. The offline world's
    28 px images bring their own preprocessing (scaling to [-1, 1]) and ignore this section."""

    KEY: ClassVar[str] = "preprocess."

    train_scale: list[float] = option(
        [0.08, 1.0], "random-resized-crop area range (timm's default (0.08, 1); both papers' code)"
    )
    train_ratio: list[float] = option([0.75, 4 / 3], "random-resized-crop aspect-ratio range (timm's default)")
    train_interpolation: Interpolation | None = option(
        None, "training resize interpolation: bilinear, bicubic, nearest (default: the backbone's)"
    )
    hflip: float = option(0.5, "probability of a horizontal flip in training")
    color_jitter: float = option(
        0.4, "brightness/contrast/saturation jitter in training; 0 turns it off (timm's default 0.4)"
    )
    eval_crop: Literal["center", "squash"] = option(
        "center",
        "evaluation: 'center' (resize the shorter side to size / "
        "crop_pct, centre crop) or 'squash' (resize to size x size)",
    )
    eval_interpolation: Interpolation | None = option(
        None, "evaluation resize interpolation: bilinear, bicubic, nearest (default: the backbone's)"
    )
    crop_pct: float | None = option(
        None,
        "evaluation crop fraction (default: the backbone's, e.g. "
        "0.9 for augreg ViTs); 1 with 'squash' is a plain resize",
    )
    mean: list[float] | None = option(None, "normalisation mean per channel (default: the backbone's)")
    std: list[float] | None = option(None, "normalisation std per channel (default: the backbone's)")
    upstream_eval: Literal["backbone", "task"] = option(
        "backbone",
        "upstream test images and the k-NN bank: 'backbone' (timm's eval "
        "transform from the pretrained_cfg) or 'task' (the eval transform above)",
    )
    upstream_crop_pct: float | None = option(
        None,
        "crop fraction of the 'backbone' upstream transform (default: "
        "the backbone's; DINO's k-NN: 0.875, i.e. 256 -> 224)",
    )

    def rules(self) -> list[tuple[bool, str]]:
        scale, ratio = self.train_scale, self.train_ratio
        return [
            (
                len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
                "preprocess.train_scale must be [low, high] with 0 < low <= high <= 1",
            ),
            (
                len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
                "preprocess.train_ratio must be [low, high] with 0 < low <= high",
            ),
            (0 <= self.hflip <= 1, "preprocess.hflip must be a probability in [0, 1]"),
            (self.color_jitter >= 0, "preprocess.color_jitter must be 0 (off) or positive"),
            (
                all(c is None or 0 < c <= 1 for c in (self.crop_pct, self.upstream_crop_pct)),
                "preprocess.crop_pct and upstream_crop_pct must be in (0, 1]",
            ),
            (
                all(
                    v is None or (len(v) == 3 and (k == "mean" or min(v) > 0))
                    for k, v in (("mean", self.mean), ("std", self.std))
                ),
                "preprocess.mean and preprocess.std must hold 3 values (std positive)",
            ),
        ]


@dataclass
class DataConfig(Checked):
    KEY: ClassVar[str] = "data."

    upstream: str = option("offline_upstream", "the pretraining task, evaluated after every task")
    tasks: list[str] = option(["fontfamily", "digits", "fontstyle"], "the downstream task sequence")
    max_train: int | None = option(None, "use at most this many training images per task (smoke runs)")
    max_test: int | None = option(None, "evaluate at most this many test images per task (seeded subset)")
    workers: int = option(0, "data-loader worker processes (decode real images in parallel; 0: in the main process)")
    pipeline: Literal["auto", "device", "pil"] = option(
        "auto",
        "where real images are decoded and preprocessed: 'device' (whole batches on the GPU, or the CPU), "
        "'pil' (PIL in the loader workers) or 'auto' (device on CUDA, pil on the CPU, where it measured faster)",
    )
    cache_decoded: bool = option(
        False, "decode real images once into a memory-mapped uint8 cache under $FORGETLAB_HOME/decoded"
    )
    eval_cache: Literal["auto", "on", "off"] = option(
        "auto",
        "keep the deterministic evaluation crops of each test set (and k-NN bank) in a memory-mapped uint8 "
        "cache under $FORGETLAB_HOME/eval-crops, computed once and read by later evaluations, runs and sweep cells: "
        "'on', 'off' or 'auto' (image files on CUDA)",
    )
    eval_cache_gb: float = option(
        16.0,
        "largest evaluation-crop cache written, in GB (ImageNet's 50,000 validation crops at 224 px: "
        "7.5 GB; a 1.28 M-image k-NN bank: 193 GB, so opt-in by raising this)",
    )
    root: str | None = option(
        None, "folder of the real datasets (default: $FORGETLAB_DATA); see 'forgetlab data check'"
    )
    split_seed: int | None = option(
        None, "seed of the random sample splits (NAME:samples_half1 ...); default: the run's seed, as paper 1's code"
    )

    def rules(self) -> list[tuple[bool, str]]:
        # (A run needs at least one task: checked with the run, :func:`validate`; a DataConfig alone may name none.)
        return [
            (
                len(set(self.tasks)) == len(self.tasks),
                "data.tasks must not repeat a name; to train a task twice, give "
                "its sample splits (NAME:samples_half1, NAME:samples_half2)",
            ),
            (self.max_train is None or self.max_train >= 1, "data.max_train must be at least 1 (or unset for all)"),
            (self.max_test is None or self.max_test >= 1, "data.max_test must be at least 1 (or unset for all)"),
            (self.eval_cache_gb >= 0, "data.eval_cache_gb must be at least 0"),
            (0 <= self.workers <= 256, "data.workers must be in 0..256"),
            (self.split_seed is None or 0 <= self.split_seed < 2**32, "data.split_seed must be in 0..4294967295"),
        ]


@dataclass
class TrainConfig(Checked):
    KEY: ClassVar[str] = "train."

    epochs: int = option(8, "epochs per task")
    task_epochs: dict[str, int] = option(
        {}, "epochs of named tasks, overriding train.epochs (paper 1: Cars 20, Flowers 60, ...)"
    )
    max_steps: int | None = option(None, "stop a task after this many optimiser steps (smoke runs)")
    batch_size: int = option(64, "training batch size")
    optimizer: Literal["adamw", "sgd"] = option("adamw", "'adamw' or 'sgd' (momentum 0.9)")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(1e-2, "weight decay")
    warmup_fraction: float = option(1 / 18, "fraction of a task's steps with linear warm-up (paper 1: 1/18)")
    warmup_steps: int | None = option(
        None, "linear warm-up steps, overriding warmup_fraction (paper 2: 500; 100 for linear probing)"
    )
    schedule: Literal["cosine", "hf_cosine"] = option(
        "cosine",
        "'cosine' (warm-up from lr/warmup, cosine to 0 at the last step) or 'hf_cosine' (transformers' "
        "get_cosine_schedule_with_warmup over (N // batch) x epochs steps, as both papers' code)",
    )
    drop_last: bool = option(False, "drop each epoch's last partial batch (paper 2's code)")
    label_smoothing: float = option(0.0, "label smoothing of the task loss")
    compile: Literal["auto", "on", "off", "reduce-overhead"] = option(
        "auto",
        "torch.compile the training step: 'auto' (on CUDA: with CUDA graphs at batch "
        "<= 32, plain above; eager on the CPU), 'on', 'off', or 'reduce-overhead' "
        "(with CUDA graphs: small batches); a failed compilation falls back to eager",
    )
    log_every: int = option(
        25,
        "steps between reads of the loss on the host (each read "
        "waits for the device; non-finite losses are caught then)",
    )
    select: Literal["last", "best"] = option(
        "last",
        "which weights end a task: 'last' or 'best' (the best task-test "
        "accuracy, scored every eval_every steps; paper 2's code)",
    )
    eval_every: int = option(
        500, "steps between scorings of the task's test set when select=best (paper 2: 500; 250 for linear probing)"
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.epochs >= 1, "train.epochs must be at least 1"),
            (all(v >= 1 for v in self.task_epochs.values()), "train.task_epochs values must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "train.max_steps must be at least 1"),
            (self.batch_size >= 1, "train.batch_size must be at least 1"),
            (self.lr > 0, "train.lr must be positive"),
            (0 <= self.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1)"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "train.warmup_steps must be 0 or more"),
            (self.log_every >= 1, "train.log_every must be at least 1"),
            (self.eval_every >= 1, "train.eval_every must be at least 1"),
            (self.weight_decay >= 0, "train.weight_decay must be 0 or more"),
            (0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
            (
                self.epochs <= 100_000 and self.batch_size <= 1_000_000,
                "train.epochs and train.batch_size are implausibly large",
            ),
        ]


@dataclass
class EvalConfig(Checked):
    KEY: ClassVar[str] = "eval."

    batch_size: int = option(256, "evaluation batch size")
    upstream_evaluator: str = field(
        default="head",
        metadata={  # a list is stored comma-joined (LIST_KEYS)
            "help": (
                "how the upstream task is scored: 'head' (its original classifier, paper 1), 'knn' (paper 2) "
                "or 'probe' (a linear probe refit on the current features, eval.linear_probe_*); a list such as "
                "[head, knn, probe] scores with each (upstream_eval.json holds each one's accuracy) and the matrix "
                "keeps the first"
            ),
            "choices": evaluator_names,
            "comma_list": True,
        },
    )
    upstream_subset: int | None = option(
        None, "score the upstream task on a fixed, seeded subset of this many test images (reports a 95% CI)"
    )
    knn_k: int = option(20, "k of the k-NN evaluator (accuracies at 10, 20, 100 and 200 are recorded too)")
    knn_temperature: float = option(0.07, "temperature of the k-NN votes, exp(similarity / T) (DINO: 0.07)")
    knn_bank_dtype: Literal["fp32", "fp16"] = option(
        "fp32",
        "storage of the k-NN bank on the device: 'fp32', or 'fp16' (half the memory; on random "
        "features it changed 1-3 of 700 votes, so it is not the default)",
    )
    knn_cache: bool = option(
        True,
        "keep k-NN banks on disk ($FORGETLAB_HOME/knn-banks), keyed by backbone weights, bank files and "
        "preprocessing, so a later run or sweep cell with the same key reuses them",
    )
    knn_features: Literal["backbone", "task_logits"] = option(
        "backbone",
        "what the k-NN compares: 'backbone' features (DINO; correct) or 'task_logits', the last task head's "
        "outputs, which reproduces paper 2's published LoRA rows (a bug of its code)",
    )
    probe_images: int = option(
        2000,
        "representation drift: after each phase, the linear CKA of the pretrained and current features at "
        "every unit on this many class-balanced upstream test images (all when fewer), into drift.csv; 0 turns it off",
    )
    linear_probe_images: int = option(
        2000,
        "the 'probe' evaluator fits on the current features of this many class-balanced upstream train images "
        "(all when fewer; for ImageNet's 1,000 classes raise it, e.g. to 10000)",
    )
    linear_probe_seed: int = option(0, "seed of the 'probe' evaluator's choice of fit images (fixed across run seeds)")
    linear_probe_c: float = option(
        0.316,
        "inverse L2 strength of the 'probe' evaluator's logistic regression on standardised features "
        "(scikit-learn's C; CLIP's linear-probe example: 0.316)",
    )
    linear_probe_max_iter: int = option(1000, "L-BFGS iterations of the 'probe' evaluator's fit at most (CLIP: 1000)")

    @property
    def evaluators(self) -> list[str]:
        """The names in ``upstream_evaluator``, in order (a list is stored comma-joined: ``head,knn``);
        the first is the one the accuracy matrix keeps."""
        return [name.strip() for name in str(self.upstream_evaluator).split(",")]

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.batch_size >= 1, "eval.batch_size must be at least 1"),
            (self.upstream_subset is None or self.upstream_subset >= 1, "eval.upstream_subset must be at least 1"),
            (
                self.knn_k >= 1 and self.knn_temperature > 0,
                "eval.knn_k must be at least 1 and eval.knn_temperature positive",
            ),
            (self.knn_k <= 100_000, "eval.knn_k must be at most 100000"),
            (
                self.probe_images == 0 or self.probe_images >= 2,
                f"eval.probe_images must be 0 (drift off) or at least 2 (CKA compares 2 or more images), "
                f"got {self.probe_images}",
            ),
            (self.linear_probe_images >= 2, "eval.linear_probe_images must be at least 2 (images of 2 classes)"),
            (
                self.linear_probe_c > 0 and self.linear_probe_max_iter >= 1,
                "eval.linear_probe_c must be positive and eval.linear_probe_max_iter at least 1",
            ),
        ]


@dataclass
class LwFConfig(Checked):
    KEY: ClassVar[str] = "lwf."

    alpha: float = option(0.0, "weight of LwF distillation on every earlier head; 0 turns LwF off (paper 1: 5)")
    temperature: float = option(2.0, "LwF softmax temperature (paper 1: 2)")
    train_earlier_heads: bool = option(
        False,
        "earlier downstream heads train too, through the distillation "
        "term (paper 1's code; the upstream head stays frozen)",
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.alpha >= 0, "lwf.alpha must be 0 (off) or positive"),
            (self.temperature > 0, "lwf.temperature must be positive"),
        ]


@dataclass
class ReplayConfig(Checked):
    KEY: ClassVar[str] = "replay."

    size: int = option(0, "upstream training examples kept in the replay buffer; 0 turns replay off")
    batch_size: int = option(16, "replayed examples appended to every training batch")

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.size >= 0, "replay.size must be 0 (off) or positive"),
            (self.batch_size >= 1, "replay.batch_size must be at least 1"),
            (self.size <= 100_000_000, "replay.size is implausibly large"),
        ]


@dataclass
class TrackConfig(Checked):
    """Experiment trackers (:mod:`forgetlab.trackers`). Not part of a run's identity: a finished or
    stopped run may be resumed with different tracking."""

    KEY: ClassVar[str] = "track."

    tensorboard: bool = option(
        False, "write TensorBoard event files into the run folder's tensorboard/ (loss, lr, accuracies, matrix, config)"
    )
    wandb: bool = option(False, "log to Weights & Biases into the run folder's wandb/ (WANDB_MODE=offline: no network)")
    wandb_project: str = option("forgetlab", "the W&B project")
    wandb_group: str | None = option(None, "the W&B group (default: the sweep's name for sweep cells)")


@dataclass
class SaveConfig(Checked):
    """What a run stores beyond its results (:mod:`forgetlab.run_updates`)."""

    KEY: ClassVar[str] = "save."

    updates: bool = option(
        False,
        "store each phase's update of the trainable backbone tensors (updates/<phase>.safetensors: fp32 "
        "W_after - W_before), which 'forgetlab explain' needs for methods other than LoRA (whose adapters "
        "hold it already: ignored there); costs a phase's trainable tensors in fp32 (ViT-B/16 full: 343 MB)",
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [(isinstance(self.updates, bool), f"save.updates must be true or false, got {self.updates!r}")]


# Keys that take a list of their choices, stored as one comma-joined string (so a single name stays as it was).
LIST_KEYS = ("eval.upstream_evaluator",)

# Keys that do not change what a run computes, left out when a folder's config is compared: where the
# folder lies (so a moved or renamed folder resumes) and the trackers.
NOT_IDENTITY = ("name", "out_dir", "track")


@dataclass
class RunConfig(Checked):
    name: str = option("default", "the run's folder name under out_dir")
    out_dir: str = option("runs", "where run folders are written")
    seed: int = option(0, "seed of initialisation, data order and dropout")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "'auto' (cuda when present), 'cpu' or 'cuda'")
    precision: Literal["auto", "fp32", "tf32", "bf16"] = option(
        "auto", "'auto' (bf16 autocast on cuda, fp32 on cpu), 'fp32', 'tf32' (fp32 with TF32 matmuls on cuda) or 'bf16'"
    )
    backbone: BackboneConfig = section(BackboneConfig, "the pretrained backbone")
    data: DataConfig = section(DataConfig, "the upstream task and the downstream sequence")
    preprocess: PreprocessConfig = section(PreprocessConfig, "how real images are preprocessed (timm transforms)")
    method: Any = option(None, "the fine-tuning method; 'name' picks it, the other keys are its own")
    train: TrainConfig = section(TrainConfig, "training of each task")
    lwf: LwFConfig = section(LwFConfig, "Learning without Forgetting, with any method")
    replay: ReplayConfig = section(ReplayConfig, "replay of upstream training examples, with any method")
    eval: EvalConfig = section(EvalConfig, "evaluation after each task")
    track: TrackConfig = section(TrackConfig, "experiment trackers: TensorBoard, Weights & Biases (off by default)")
    save: SaveConfig = section(SaveConfig, "what a run stores beyond its results (per-phase weight updates)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (
                "/" not in self.name and self.name not in ("", ".", "..") and "\0" not in self.name,
                "name must be a plain folder name",
            ),
            (self.out_dir != "" and "\0" not in self.out_dir, "out_dir must be a folder path"),
            (0 <= self.seed < 2**32, "seed must be in 0..4294967295"),
        ]


DEFAULT_METHOD = {"name": "lora"}


# ---------------------------------------------------------------------------------------------- parsing
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading YAML 1.2's core schema (https://yaml.org/spec/1.2.2/#103-core-schema)
    instead of PyYAML's YAML 1.1: only ``true``/``false`` (also ``True``, ``TRUE``, ...) are booleans,
    so ``off``, ``on``, ``yes``, ``no``, ``y`` and ``n`` stay strings (``train.compile=off``); ``1e-3``
    and ``1e6`` are numbers; ``010`` is ten, ``0o10`` eight and ``0x10`` sixteen; ``1_000``, ``1:30`` and
    ``2024-01-01`` are strings. A mapping that repeats a key is an error."""


# The core schema's regular expressions, in its order (int before float), by first character.
_CORE_SCHEMA = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
)
_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in _CORE_SCHEMA:
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _core_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _core_int)


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that also quotes the strings YAML 1.2 would read as something else
    (``'1e5'``, ``'0o17'``), so that :func:`parse_yaml` (1.2) and any YAML 1.1 reader read back the
    same strings; ``'off'`` and ``'yes'`` are quoted already, for YAML 1.1 readers."""


_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _tag, _pattern, _first in _CORE_SCHEMA:
    _Dumper.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (list, dict, set)):
            raise ConfigError(
                f"a key at line {key_node.start_mark.line + 1} is a {type(key).__name__}; keys must be names"
            )
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"key '{key}' appears twice (line {mark.line + 1}); keep one")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: dict(_mapping_without_duplicates(loader, node, deep=True)),
)


def parse_yaml(text: str):
    """YAML as forgetlab reads it everywhere (command line, config files, run folders' config.yaml,
    sweep files): YAML 1.2's core schema, see :class:`_Loader`. An explicit tag on a value it does not
    fit (``!!int abc``) is a ``yaml.YAMLError`` like any other unreadable YAML."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
    ) as error:  # PyYAML's constructors of !!int, !!bool, !!timestamp
        raise yaml.constructor.ConstructorError(None, None, f"a tagged value does not fit its tag ({error})") from error


def dump_yaml(data, **kwargs) -> str:
    """``yaml.safe_dump`` whose output :func:`parse_yaml` reads back unchanged (see :class:`_Dumper`)."""
    return yaml.dump(data, Dumper=_Dumper, **kwargs)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        # YAML 1.1's yes/no/on/off are strings in YAML 1.2: refused rather than guessed
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    elif typing.get_origin(tp) is Literal:
        if isinstance(value, str):
            return value  # one of the names: checked by the section itself (Checked), with the choices in the message
        raise ConfigError(f"'{key}' must be str, got {value!r}")
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass ``cls`` from a dict, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(fields))}")
    for name, value in data.items():
        if fields[name].metadata.get("comma_list") and value == []:
            raise ConfigError(
                f"{prefix}{name} lists nothing; give one name or a list of them, e.g. [{fields[name].default}]"
            )
    data = {
        name: ",".join(value)
        if fields[name].metadata.get("comma_list")
        and isinstance(value, list)
        and value
        and all(isinstance(v, str) for v in value)
        else value
        for name, value in data.items()
    }  # [q, v] is "q,v"
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**values)


def method_config_from_dict(data) -> Any:
    from forgetlab.methods import method_class

    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"'method' must be a mapping such as {{name: lora, rank: 4}}, got {data!r}")
    data = dict(DEFAULT_METHOD if data is None else data)
    name = data.pop("name", DEFAULT_METHOD["name"])
    if not isinstance(name, str):
        raise ConfigError(f"'method.name' must be a method's name, got {name!r}")
    return from_dict(method_class(name).Config, {**data, "name": name}, prefix="method.")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _indenting_tab(text: str, error_line: int | None) -> int | None:
    """The line (from 1) of a tab that YAML cannot read: in a line's indentation or right after a key's
    colon, at or before the line where the parser stopped; None if there is none."""
    for number, line in enumerate(text.splitlines(), start=1):
        if error_line is not None and number > error_line:
            break
        if "\t" in line[: len(line) - len(line.lstrip(" \t"))] or re.search(r":\t", line):
            return number
    return None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found; give an existing YAML file or none for the default")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file; give a YAML file")
    try:
        data = parse_yaml(path.read_text()) or {}
    except ConfigError as error:  # a repeated key, a key that is a list: name the file as well as the line
        raise ConfigError(f"{path}: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a text file; give a YAML file") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        tab = _indenting_tab(path.read_text(), mark.line + 1 if mark else None)
        if tab:
            raise ConfigError(f"tab character at line {tab} of {path}; YAML indents with spaces") from error
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the file") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Layer:
    """One layer of a run config, in the order :func:`merge_layers` stacks them: forgetlab's defaults,
    then a preset or a config file, a sweep's ``base_config`` and ``base``, its named variant and grid
    keys, the command line's ``key=value`` overrides or ``forgetlab.run(**kwargs)``. ``tree`` holds the
    layer's own keys only (dotted keys such as ``train.epochs`` are nested by :func:`expand`); ``name``
    and ``file`` say where they come from, for errors."""

    name: str
    tree: dict
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file}" if self.file else self.name


def expand(tree, where: str = "config") -> dict:
    """One layer's keys as a nested tree: a dotted key (``train.epochs: 2``, ``method.rank=4``) becomes
    its section's key; keys given twice in one layer merge as sections do (the later value wins)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must be a mapping of config keys, got {tree!r}")
    nested: dict = {}
    for key, value in tree.items():
        parts = str(key).split(".") if isinstance(key, str) else [key]
        if not all(part != "" for part in parts):
            raise ConfigError(f"key '{key}' in {where} is malformed; use dotted names like train.epochs")
        node = nested
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"'{'.'.join(parts[: depth + 1])}' in {where} is a value, not a section; '{key}' cannot go under it"
                )
            node = child
        value = expand(value, where) if isinstance(value, dict) else copy.deepcopy(value)
        leaf = parts[-1]
        node[leaf] = (
            _merge_keys(node[leaf], value) if isinstance(node.get(leaf), dict) and isinstance(value, dict) else value
        )
    return nested


def _merge_keys(below: dict, layer: dict) -> dict:
    merged = dict(below)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(below.get(key), dict):
            merged[key] = _merge_keys(below[key], value)
        elif value is None and isinstance(below.get(key), dict):
            continue  # an empty section heading ('train:' with nothing under it) keeps the section
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def switches_method(below: dict, layer: dict) -> bool:
    """Whether ``layer`` names another method than the tree ``below`` it (no name there: ``lora``)."""
    own, current = layer.get("method"), below.get("method")
    if not isinstance(own, dict) or own.get("name") is None:
        return False
    current_name = current.get("name", DEFAULT_METHOD["name"]) if isinstance(current, dict) else DEFAULT_METHOD["name"]
    return own["name"] != current_name


def merge(below: dict, layer: dict) -> dict:
    """The one rule by which every config layer goes on top of the ones below it (a new tree; neither
    argument changes): section by section and key by key, at every depth (``backbone.kwargs`` and
    ``train.task_epochs`` too); any other value replaces the one below; ``null`` on a section keeps it.
    A ``method`` section that names another method than the one below starts from that method's
    defaults: the keys below it belonged to the other method."""
    layer = expand(layer)
    if switches_method(below, layer):
        below = {key: value for key, value in below.items() if key != "method"}
    return _merge_keys(below, layer)


def leaves(tree: dict, prefix: str = "") -> dict:
    """``{dotted key: value}`` of a nested tree (an empty mapping is a leaf)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge_layers(layers) -> tuple[dict, dict[str, Layer]]:
    """The tree of ``layers`` stacked bottom to top by :func:`merge`, and the layer each of its keys
    (dotted) came from."""
    tree: dict = {}
    origins: dict[str, Layer] = {}
    for layer in layers:
        own = expand(layer.tree, layer.where)
        if switches_method(tree, own):
            origins = {key: where for key, where in origins.items() if not key.startswith("method.")}
        tree = merge(tree, own)
        origins.update(dict.fromkeys(leaves(own), layer))
    return tree, origins


def parse_override(assignment: str) -> tuple[str, Any]:
    """``a.b.c=value`` as ``("a.b.c", value)``; the value is parsed as YAML (``4`` is an int)."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key=value, e.g. method.rank=16")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not all(key.split(".")):
        raise ConfigError(f"override key '{key}' is malformed; use dotted names like train.epochs=5")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def override_layer(assignments, name: str = "command line") -> Layer:
    """The layer of ``key=value`` overrides (later ones win)."""
    tree: dict = {}
    for assignment in assignments:
        key, value = parse_override(assignment)
        tree = _merge_keys(tree, expand({key: value}, name))
    return Layer(name, tree)


def file_layer(path: str | Path, name: str = "config file") -> Layer:
    return Layer(name, load_yaml(path), str(path))


def _origin_of(message: str, origins: dict[str, Layer]) -> Layer | None:
    """The layer of the first config key that an error message names (the longest key first)."""
    found = []
    for key, layer in origins.items():
        for candidate in {key, *(key.rsplit(".", depth)[0] for depth in range(1, key.count(".") + 1))}:
            match = re.search(rf"(?<![\w.]){re.escape(candidate)}(?![\w])", message)
            if match:
                found.append((match.start(), -len(candidate), layer))
    return min(found, key=lambda item: item[:2])[2] if found else None


def resolve_layers(layers) -> RunConfig:
    """A validated :class:`RunConfig` from ``layers`` (see :class:`Layer`, :func:`merge`); an error
    names the layer (and file) that holds the key it is about."""
    tree, origins = merge_layers(layers)
    try:
        config = _resolve_tree(tree)
        if "name" not in tree:
            config.name = run_name(config)
        return config
    except ConfigError as error:
        layer = _origin_of(str(error), origins)
        given = [layer for layer in layers if layer.tree]
        if layer is None or (layer.file is None and len(given) == 1):  # one layer without a file: nothing to tell apart
            raise
        raise ConfigError(f"{error} (set by {layer.where})") from error


ABBREVIATIONS = {"rank": "r", "copies": "p"}  # in run and sweep-cell names: lora-r4, block_expansion-p2
MAX_NAME = 80


def name_part(text) -> str:
    """A value as part of a folder name: lists joined by ``+``, other characters than letters,
    digits and ``-_.+`` as ``_``."""
    text = "+".join(map(str, text)) if isinstance(text, list) else str(text)
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)


def flag_token(key: str, value) -> str | None:
    """A value that is no quantity, as a run's or a sweep cell's name part: ``no_positions`` for
    None, False or an empty list, mapping or string; the key's last word (``random_init``) for True;
    None for any other value (it is named with its key: ``r4``, ``epochs2``)."""
    last = key.split(".")[-1]
    if value is None or value is False or (isinstance(value, (list, dict, str)) and not value):
        return f"no_{last}"
    return last if value is True else None


def name_token(key: str, value) -> str:
    """One changed key of a run without ``name``, as part of its folder name: a ``*.name`` value as it
    is; a string as it is (a path by its file name, a comma list joined by ``+``: ``q+v``); None,
    booleans and empty values by :func:`flag_token`; anything else by its key's last word (short:
    :data:`ABBREVIATIONS`) and the value (``r16``, ``epochs2``, ``positions3+7``)."""
    last = key.split(".")[-1]
    if last == "name":
        return name_part(value)
    flag = flag_token(key, value)
    if flag is not None:
        return flag
    if isinstance(value, str):
        text = Path(value).name if "/" in value else value
        return name_part("+".join(part.strip() for part in text.split(",")))
    return f"{ABBREVIATIONS.get(last, last)}{name_part(value)}"


def run_name(config: RunConfig) -> str:
    """The folder name of a run given no ``name``: what differs from forgetlab's defaults
    (:func:`name_token` each, ``*.name`` values first), named as a sweep's cells are
    (``lora-r16-epochs2``, ``block_expansion-p2``); ``default`` for the default config. The method's
    options are compared with the defaults of the method the config names, so an option it leaves
    at its default never appears. A name over 80 characters keeps its start and ends with a hash of
    the whole."""
    import hashlib

    defaults = leaves(to_dict(resolve_layers([Layer("name", {"name": "default"})])))
    # the method's own options against its own defaults; its name against forgetlab's default method
    method_defaults = leaves({"method": to_dict(method_config_from_dict({"name": config.method.name}))})
    defaults.update({key: value for key, value in method_defaults.items() if key != "method.name"})
    own = {key: value for key, value in leaves(to_dict(config)).items() if key.split(".")[0] not in NOT_IDENTITY}
    changed = {key: value for key, value in own.items() if key not in defaults or defaults[key] != value}
    names = [name_token(key, value) for key, value in changed.items() if key.split(".")[-1] == "name"]
    others = [name_token(key, value) for key, value in changed.items() if key.split(".")[-1] != "name"]
    name = "-".join([*names, *others]) or "default"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(dump_yaml(changed, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
    return name if name not in (".", "..") else f"run{name}"


def _resolve_tree(tree: dict) -> RunConfig:
    tree = dict(tree)
    method = tree.pop("method", None)
    config = from_dict(RunConfig, tree)
    config.method = method_config_from_dict(method)
    validate(config)
    return config


def resolve(tree: dict | None = None, overrides: list[str] = ()) -> RunConfig:
    """A validated :class:`RunConfig` from a dict (e.g. loaded YAML) and ``key=value`` overrides."""
    return resolve_layers([Layer("config", tree or {}), override_layer(overrides)])


def documented_choices(config=None, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """``{dotted key: choices}`` of every key of ``config`` (a dataclass or its class; default
    :class:`RunConfig`) that takes one of a few names: its ``Literal`` type, or a comma list's
    ``choices`` metadata (:func:`~forgetlab.methods.base.choices_of`)."""
    config = RunConfig if config is None else config
    cls = config if isinstance(config, type) else type(config)
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(documented_choices(hints[f.name], f"{prefix}{f.name}."))
    return {**{f"{prefix}{name}": choices for name, (choices, _) in choices_of(cls).items()}, **found}


def validate(config: RunConfig) -> None:
    """The checks that read more than one section (each section checks its own keys when it is built,
    :class:`~forgetlab.methods.base.Checked`): a run needs a task; ``train.task_epochs`` names datasets;
    and the method's limits that depend on the backbone (top-k's ``k``, block expansion's positions),
    read from the backbone's architecture built without weights
    (:func:`forgetlab.models.skeleton.backbone_skeleton`). Raises :class:`ConfigError`."""
    if not config.data.tasks:
        raise ConfigError("data.tasks must name at least one task")
    from forgetlab.data.registry import dataset_names

    unknown = sorted(key for key in config.train.task_epochs if key.partition(":")[0] not in dataset_names())
    if unknown:
        raise ConfigError(
            f"train.task_epochs names '{unknown[0]}', which is no dataset; "
            f"use task or dataset names ({', '.join(dataset_names())})"
        )
    from forgetlab.methods import method_class

    method = method_class(config.method.name)
    if method.reads_backbone():
        from forgetlab.models.skeleton import backbone_skeleton

        method.check_backbone(config.method, backbone_skeleton(config.backbone))


def load(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The config of a YAML file (or the defaults) with ``key=value`` overrides on top."""
    return resolve_layers([*([file_layer(path)] if path else []), override_layer(overrides)])


def normalise(stored: dict) -> dict:
    """A stored config (e.g. a run folder's ``config.yaml``) read through the current schema, so that
    options added since it was written take their defaults; as it is if it no longer fits the schema."""
    try:
        return to_dict(resolve(stored))
    except ConfigError:
        return stored


def load_stored(path: str | Path) -> RunConfig:
    """The resolved config of a run folder's ``config.yaml``, read through the current schema (once:
    resolving it is what :func:`normalise` would do first)."""
    return resolve(parse_yaml(Path(path).read_text()))


def dump(config: RunConfig) -> str:
    return dump_yaml(to_dict(config), sort_keys=False)


def describe_all(config) -> list[tuple[str, str, object]]:
    """:func:`describe`, with the registered names a key takes (methods, datasets, upstream evaluators,
    plugins' included), then every other method's own keys at their defaults, keyed
    ``method.KEY (method.name=NAME)`` (``forgetlab config --keys``)."""
    from forgetlab.data.registry import dataset_names
    from forgetlab.evaluators import evaluator_names
    from forgetlab.methods import method_class, method_names

    registered = {  # keys whose values name registered extensions: their names as registered now
        "data.upstream": ("datasets", dataset_names),
        "data.tasks": ("datasets", dataset_names),
        "eval.upstream_evaluator": ("upstream evaluators", evaluator_names),
    }
    rows = []
    for key, help_text, value in describe(config):
        if key == "method.name":
            help_text = (
                f"the fine-tuning method: {', '.join(method_names())}; the other method.* keys are that method's own"
            )
        elif key in registered:
            what, names = registered[key]
            help_text = f"{help_text}; {what}: {', '.join(names())}"
        rows.append((key, help_text, value))
    for name in method_names():
        if name != config.method.name:
            rows += [
                (f"method.{key} (method.name={name})", help_text, value)
                for key, help_text, value in describe(method_class(name).Config())
                if key != "name"
            ]
    return rows


def describe(config) -> list[tuple[str, str, object]]:
    """``(dotted key, help, value)`` for every leaf of a resolved config."""
    rows = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += [(f"{f.name}.{key}", help_text, v) for key, help_text, v in describe(value)]
        else:
            rows.append((f.name, f.metadata.get("help", ""), value))
    return rows
