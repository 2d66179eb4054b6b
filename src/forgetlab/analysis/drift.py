"""Where forgetting happens in the features, read from a run folder: the representation drift per unit
and phase (``drift.csv``, and by group of upstream classes ``drift_groups.csv``), each upstream evaluator's
accuracy per phase (``upstream_eval.json``), and the split of the frozen head's upstream drop into
knowledge **lost** (the drop of a linear probe refit on the features where the run scored with ``probe``,
else the k-NN's: the features no longer hold the classes) and a head **misaligned** (the rest: the
features still hold them, the old head no longer reads them), after Davari et al. (CVPR 2022, "Probing
Representation Forgetting").

The split's intervals are paired bootstrap intervals over the upstream test images: each resample
draws images with replacement and recomputes both evaluators' accuracies before and after the phase
from the per-example predictions stored in ``predictions/upstream_after_<i>.npz``
(``predictions_head``, ``predictions_probe``, ``predictions_knn``: written when ``eval.upstream_evaluator``
lists several).

Reads files only (pandas, numpy); the report and the API import this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DRIFT_COLUMNS = ["phase", "unit", "cka"]


def _committed(path: Path) -> int:
    from forgetlab.results import RunFolder

    return RunFolder(path).completed_tasks()


def _committed_table(run_path: Path, view: str, part: str, columns: list[str], **read):
    """The rows of the committed phases 0..k, read from the per-phase files the commit hashed
    (``drift/<part>-<i>.csv``), so a damaged or stale view (``view``, rewritten after each commit) cannot
    change them; the view itself for a folder without per-phase files. Empty when there is neither."""
    import pandas as pd

    committed = _committed(run_path)
    files = [run_path / "drift" / f"{part}-{index}.csv" for index in range(committed + 1)]
    files = [path for path in files if path.exists()]
    if files:
        table = pd.concat([pd.read_csv(path, **read) for path in files], ignore_index=True)
    elif (run_path / view).exists():
        table = pd.read_csv(run_path / view, **read)
    else:
        return pd.DataFrame(columns=columns)
    return table[table["phase"] <= committed].reset_index(drop=True)


def drift_table(run_path: str | Path):
    """``drift.csv`` of a run as a DataFrame (``phase``, ``unit``, ``cka``), committed phases only, in
    the file's order (units in forward order); empty when the run wrote none (``eval.probe_images=0``).
    Read from the committed ``drift/phase-<i>.csv`` files that ``drift.csv`` is the view of."""
    return _committed_table(Path(run_path), "drift.csv", "phase", DRIFT_COLUMNS)


DRIFT_GROUP_COLUMNS = ["phase", "group", "domain", "unit", "classes", "images", "cka", "missing"]


def drift_groups_table(run_path: str | Path):
    """``drift_groups.csv`` of a run as a DataFrame (:data:`DRIFT_GROUP_COLUMNS`): per phase, group of upstream
    classes (``near``, ``far``: the outer quartiles of their similarity to the phase's domain) and unit, the
    linear CKA on that group's probe images; committed phases only. ``cka`` is NaN exactly where ``missing``
    gives the reason (a group with fewer than 2 probe images). Empty when the run wrote none (drift off, or
    no WordNet synsets or domains)."""
    return _committed_table(
        Path(run_path),
        "drift_groups.csv",
        "groups",
        DRIFT_GROUP_COLUMNS,
        keep_default_na=False,
        na_values={"cka": [""]},
    )


def upstream_evaluators_table(run_path: str | Path, evaluators: list[str]):
    """One row per matrix row and evaluator (``row``, ``evaluator``, ``accuracy_pct``: percent) from
    ``upstream_eval.json``'s committed records (stored as fractions); ``evaluators`` are the run's
    (``eval.upstream_evaluator``, in order). A run with one evaluator has its ``accuracy`` under that name."""
    import pandas as pd

    from forgetlab.results import RunFolder

    rows = []
    for record in RunFolder(run_path).read_upstream_eval():
        for name in evaluators:
            value = record.get(name) if len(evaluators) > 1 else record.get("accuracy")
            rows.append(
                {"row": record["row"], "evaluator": name, "accuracy_pct": None if value is None else 100 * value}
            )
    return pd.DataFrame(rows, columns=["row", "evaluator", "accuracy_pct"])


def lost_misaligned(correct: dict[str, np.ndarray], phase: int, *, resamples: int = 2000, seed: int = 0) -> dict:
    """The head's upstream drop after ``phase`` split into ``lost`` and ``misaligned``, with 95 %
    percentile bootstrap intervals over images. ``correct``: ``{"head": bool [rows, images], measure:
    bool [rows, images]}``, row 0 the pretrained model, ``measure`` the evaluator whose drop is the knowledge
    lost: ``"probe"`` (a linear probe refit on the features) where given, else ``"knn"``. Returns
    ``{"phase", "lost_by", "head_drop_pp", "lost_pp", "misaligned_pp", "<each>_ci_pp": (low, high)}``: drops
    in percentage points of accuracy, positive = worse; ``lost_by``: the measure's name."""
    lost_by = lost_measure(correct)
    head, knn = np.asarray(correct["head"], bool), np.asarray(correct[lost_by], bool)
    per_image_head = 100 * (head[0].astype(float) - head[phase])  # points: a drop of one image of n is 100 / n
    per_image_knn = 100 * (knn[0].astype(float) - knn[phase])
    count = per_image_head.shape[0]
    draws = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    boot_head, boot_knn = per_image_head[draws].mean(1), per_image_knn[draws].mean(1)
    estimate = {"head_drop": per_image_head.mean(), "lost": per_image_knn.mean()}
    estimate["misaligned"] = estimate["head_drop"] - estimate["lost"]
    boots = {"head_drop": boot_head, "lost": boot_knn, "misaligned": boot_head - boot_knn}
    result: dict = {
        "phase": phase,
        "lost_by": lost_by,
        **{f"{key}_pp": float(value) for key, value in estimate.items()},
    }
    for key, values in boots.items():
        result[f"{key}_ci_pp"] = tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))
    return result


# The evaluators whose drop measures knowledge lost, preferred first: a linear probe refit on the current
# features (Davari et al., 2022: the probe's accuracy is their measure of what the features hold), else the
# k-NN on the same features.
LOST_MEASURES = ("probe", "knn")


def lost_measure(correct: dict) -> str:
    """The evaluator of ``correct`` (names -> per-image correctness) whose drop is the knowledge lost: the
    first of :data:`LOST_MEASURES` present. Raises ``KeyError`` when neither is."""
    for name in LOST_MEASURES:
        if name in correct:
            return name
    raise KeyError(f"the lost/misaligned split needs the predictions of one of {', '.join(LOST_MEASURES)}")


def stored_correctness(run_path: str | Path) -> dict[str, np.ndarray] | None:
    """``{"head", measure}`` -> bool ``[rows, images]`` from the stored per-evaluator predictions, ``measure``
    the first of :data:`LOST_MEASURES` stored in every committed row (``probe``, else ``knn``); None when the
    run did not store the head's and one of them (it scored with one evaluator, or without either)."""
    from forgetlab.results import RunFolder

    folder = RunFolder(run_path)
    rows = [folder.read_predictions(row) for row in range(folder.completed_tasks() + 1)]
    for measure in LOST_MEASURES:
        if all(f"predictions_{name}" in arrays for arrays in rows for name in ("head", measure)):
            return {
                name: np.stack([arrays[f"predictions_{name}"] == arrays["labels"] for arrays in rows])
                for name in ("head", measure)
            }
    return None


def lost_misaligned_table(run_path: str | Path, *, resamples: int = 2000, seed: int = 0):
    """:func:`lost_misaligned` for every phase of a run that stored the head's and the probe's or k-NN's
    predictions (a DataFrame, one row per phase, ``lost_by`` naming the measure; empty otherwise)."""
    import pandas as pd

    correct = stored_correctness(run_path)
    if correct is None:
        return pd.DataFrame()
    return pd.DataFrame(
        [lost_misaligned(correct, phase, resamples=resamples, seed=seed) for phase in range(1, len(correct["head"]))]
    )


def near_far_classes(similarity: np.ndarray) -> dict[str, np.ndarray] | None:
    """Upstream classes near to and far from a task's domain: the top and the bottom quartile of the
    per-class similarity (``near``: at least the 75th percentile, ``far``: at most the 25th), as bool
    masks over the classes; None when the two quartiles coincide (no split to speak of)."""
    low, high = np.percentile(similarity, [25, 75])
    if not high > low:
        return None
    return {"near": similarity >= high, "far": similarity <= low}


def lost_misaligned_by_group_table(
    run_path: str | Path, *, similarity: str = "synset", resamples: int = 2000, seed: int = 0
):
    """:func:`lost_misaligned` per phase for the upstream test images of the classes near to and far from
    that phase's domain (:func:`near_far_classes` of :func:`forgetlab.analysis.contextual.class_similarities`,
    ``similarity`` as the contextual analysis takes it). A DataFrame with ``group``, ``domain``,
    ``classes``, ``images`` and the split's columns (``lost_by``: ``probe`` or ``knn``); empty for a run
    without WordNet synsets, domains or stored head and probe or k-NN predictions."""
    import pandas as pd

    from forgetlab.analysis.collect import RunResult
    from forgetlab.analysis.contextual import class_similarities
    from forgetlab.results import RunFolder

    correct = stored_correctness(run_path)
    run = RunResult(RunFolder(run_path))
    synsets = run.upstream.get("synsets") if correct is not None else None
    if not synsets:
        return pd.DataFrame()
    labels = run.predictions(0)["labels"]
    rows = []
    for phase in range(1, len(correct["head"])):
        domain = run.domain(phase)
        groups = (
            near_far_classes(
                class_similarities(domain, synsets=synsets, mode=similarity, domain_word=run.domain_word(phase))
            )
            if domain
            else None
        )
        for group, classes in (groups or {}).items():
            images = classes[labels]
            if images.sum() == 0:
                continue
            split = lost_misaligned(
                {name: values[:, images] for name, values in correct.items()}, phase, resamples=resamples, seed=seed
            )
            rows.append(
                {"group": group, "domain": domain, "classes": int(classes.sum()), "images": int(images.sum()), **split}
            )
    return pd.DataFrame(rows)
