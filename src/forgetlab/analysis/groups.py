"""Which runs a finding may compare, and how groups that may not be compared are told apart.

A comparison is fair only between runs that differ in the compared key(s) (the LoRA rank; the method)
and the seed. Runs are therefore grouped by their config with those keys and the seed taken out; two
groups that differ in anything else (``train.epochs=8`` vs ``train.epochs=2``) are never pooled or
ranked against each other, and each is labelled with exactly the keys in which it differs from the
groups it is shown beside (:func:`what_differs`).

Works on stored config dicts; imports only ``config`` (which keys are not part of a run's identity).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from forgetlab.config import NOT_IDENTITY

# The sections that make up a method row of paper 2's table ('lora r=4 +lwf'): compared, not context.
METHOD_SECTIONS = ("method", "lwf", "replay")
_UNSET = object()


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{'train': {'epochs': 2}}`` -> ``{'train.epochs': 2}`` (empty sections vanish)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def identity(run, *ignored: str) -> dict:
    """A run's flattened config without the keys outside its identity (``name``, ``out_dir``,
    ``track``), its ``seed`` and the ``ignored`` keys or sections (``method.rank``, ``method``)."""
    dropped = (*NOT_IDENTITY, "seed", *ignored)
    return {
        key: value
        for key, value in flatten(run.config).items()
        if not any(key == d or key.startswith(d + ".") for d in dropped)
    }


def identity_key(run, *ignored: str) -> str:
    """:func:`identity` as a canonical string: equal for runs that may be compared."""
    return json.dumps(identity(run, *ignored), sort_keys=True, default=str)


def matching(run, candidates, *compared: str, same_seed: bool = True) -> list:
    """The ``candidates`` that may stand beside ``run`` in a comparison of the ``compared`` keys or
    sections: equal :func:`identity` once those are taken out (and the same seed, unless
    ``same_seed=False``), ``run`` itself included when it is a candidate.

    The one rule every pairing of runs follows: FWT's linear probe, the rank curves' groups, the
    methods table's rows and the contextual findings' groups. A key left out of the comparison
    (``train.max_steps``, ``backbone.weights``, ``preprocess.*``) must be equal; the folder's name and
    its order never matter. Callers that need one reference and get two name both and use neither."""
    key = identity_key(run, *compared)
    return [
        other
        for other in candidates
        if (not same_seed or other.seed == run.seed) and identity_key(other, *compared) == key
    ]


def duplicates(runs) -> list[list]:
    """Sets of two or more ``runs`` with the same identity and seed (copies of one run, e.g. in two
    sweep folders): a comparison cannot tell which to use, so it uses none of them and says so."""
    by_key: dict[tuple, list] = {}
    for run in runs:
        by_key.setdefault((identity_key(run), run.seed), []).append(run)
    return [members for members in by_key.values() if len(members) > 1]


def distinct(runs) -> list:
    """``runs`` without every run that has a duplicate (:func:`duplicates`), in their order."""
    twice = {id(run) for members in duplicates(runs) for run in members}
    return [run for run in runs if id(run) not in twice]


def format_value(value) -> str:
    """A config value as the command line writes it: ``[a, b]``, ``none``, ``0.001``."""
    if value is _UNSET:
        return "unset"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def what_differs(identities: list[dict], skip: tuple[str, ...] = ()) -> list[str]:
    """For each of ``identities`` (flattened configs), ``key=value`` of every key whose value is not
    the same in all of them (``skip``: keys or sections shown elsewhere), joined by ``, ``; ``""``
    where all agree."""
    keys = sorted(
        {key for item in identities for key in item if not any(key == s or key.startswith(s + ".") for s in skip)}
    )
    differing = [key for key in keys if len({format_value(item.get(key, _UNSET)) for item in identities}) > 1]
    return [", ".join(f"{key}={format_value(item.get(key, _UNSET))}" for key in differing) for item in identities]


def group_labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Labels for groups keyed ``(base, identity key)``: the base (``offline_vit +lwf``) and, where
    other groups share it, what differs from them in parentheses (``offline_vit (train.epochs=2)``)."""
    labels = {}
    for base in dict.fromkeys(base for base, _ in keys):
        members = [key for key in keys if key[0] == base]
        for key, setting in zip(members, what_differs([json.loads(identity) for _, identity in members])):
            labels[key] = f"{base} ({setting})" if setting else base
    return labels


# Keys that a run's short method label (``RunResult.method``: 'lora r=4 keep +lwf') names by itself.
SHORT_LABEL_KEYS = (
    "method.name",
    "method.rank",
    "method.k",
    "method.copies",
    "method.policy",
    "lwf.alpha",
    "replay.size",
)


def method_labels(runs) -> list[str]:
    """One method label per run: its short label (``lora r=16``) and, in parentheses, every key of the
    method sections (``method``, ``lwf``, ``replay``) in which it differs from other runs of the same
    ``method.name`` among ``runs`` and that the short label does not already tell apart:
    ``lora r=16 (method.dora=true, method.scaling=standard)``. Keys the short label names
    (:data:`SHORT_LABEL_KEYS`) are left out where each short label has one value of them."""
    flats = [flatten({section: run.config.get(section) or {} for section in METHOD_SECTIONS}) for run in runs]
    shorts, names = [run.method for run in runs], [run.config["method"]["name"] for run in runs]
    shown: dict[str, list[str]] = {name: [] for name in names}  # method.name -> the keys its labels name
    for key in sorted({key for flat in flats for key in flat}):
        by_name, by_short = {}, {}
        for name, short, flat in zip(names, shorts, flats):
            value = format_value(flat.get(key, _UNSET))
            by_name.setdefault(name, set()).add(value)
            by_short.setdefault(short, set()).add(value)
        if key in SHORT_LABEL_KEYS and all(len(values) < 2 for values in by_short.values()):
            continue
        for name, values in by_name.items():
            if len(values) > 1:
                shown[name].append(key)
    return [
        f"{short} ({', '.join(f'{key}={format_value(flat.get(key, _UNSET))}' for key in shown[name])})"
        if shown[name]
        else short
        for short, name, flat in zip(shorts, names, flats)
    ]


def method_family(run) -> str:
    """The method label without LoRA's rank: 'lora', 'lora +lwf', 'linear', 'top-3'."""
    words = run.method.split(" ")
    return " ".join(words[:1] + words[2:]) if words[0] == "lora" else run.method


def _variant(run) -> str:
    """The method label after 'lora r=N': '', 'keep', '+lwf', '+lwf +replay'."""
    return " ".join(run.method.split(" ")[2:])


@dataclass
class RankGroup:
    """Finished merged-LoRA runs that differ only in their rank and seed (paper 1, figures 1-2)."""

    backbone: str
    variant: str  # '', '+lwf', ...
    label: str  # backbone, variant and what differs from the other groups sharing them
    runs: list = field(default_factory=list)

    @property
    def ranks(self) -> list[int]:
        return sorted({run.config["method"]["rank"] for run in self.runs})

    def points(self, column: int = 0) -> list[tuple[int, float]]:
        """``(rank, final accuracy on matrix column ``column``)`` per run (0: upstream, 1: first task)."""
        return [(run.config["method"]["rank"], float(run.matrix.as_array()[-1, column])) for run in self.runs]

    def seeds_per_rank(self) -> list[int]:
        return [sum(1 for run in self.runs if run.config["method"]["rank"] == rank) for rank in self.ranks]


def rank_groups(runs) -> list[RankGroup]:
    """Every group of finished merged-LoRA runs that differ only in ``method.rank`` and the seed, in a
    stable order, each labelled with what differs from the groups sharing its backbone and variant.
    Runs with a duplicate (same identity and seed, :func:`duplicates`) are in no group."""
    by_key: dict[tuple, list] = {}
    for run in distinct(runs):
        method = run.config["method"]
        if method["name"] != "lora" or method.get("policy") == "keep" or run.completed < run.matrix.num_tasks:
            continue
        by_key.setdefault((run.backbone, _variant(run), identity_key(run, "method.rank")), []).append(run)
    labels = group_labels(
        [(f"{backbone} {variant}".strip(), identity) for backbone, variant, identity in sorted(by_key)]
    )
    return [
        RankGroup(
            backbone,
            variant,
            labels[(f"{backbone} {variant}".strip(), identity)],
            by_key[(backbone, variant, identity)],
        )
        for backbone, variant, identity in sorted(by_key)
    ]
