"""Per-class forgetting of the upstream task (paper 1, section on contextual forgetting).

From the upstream predictions stored before and after a task, every test image is one of: forgotten
(right before, wrong after), retained (right both times), newly learned (wrong before, right after) or
never right. Counting them per class gives the "most forgotten classes" of paper 1's figure 3.

Pure functions of prediction arrays (numpy only); the caller reads them from the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClassChanges:
    """Per upstream class (index = class id): image counts of each kind."""

    forgotten: np.ndarray
    retained: np.ndarray
    learned: np.ndarray
    total: np.ndarray

    @property
    def forgotten_fraction(self) -> np.ndarray:
        """Forgotten images over images that were right before (NaN for a class never right)."""
        right_before = self.forgotten + self.retained
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(right_before > 0, self.forgotten / np.maximum(right_before, 1), np.nan)


def class_changes(before: np.ndarray, after: np.ndarray, labels: np.ndarray, num_classes: int) -> ClassChanges:
    before, after, labels = np.asarray(before), np.asarray(after), np.asarray(labels)
    if not before.shape == after.shape == labels.shape:
        raise ValueError(f"predictions and labels differ in length: {before.shape}, {after.shape}, {labels.shape}")
    right_before, right_after = before == labels, after == labels

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels[mask], minlength=num_classes)

    return ClassChanges(
        forgotten=count(right_before & ~right_after),
        retained=count(right_before & right_after),
        learned=count(~right_before & right_after),
        total=np.bincount(labels, minlength=num_classes),
    )


def most_forgotten(changes: ClassChanges, k: int = 20) -> list[tuple[int, int]]:
    """The ``k`` classes with the most forgotten images, as ``(class, count)``; ties by class id; zeros left out."""
    order = sorted(range(len(changes.forgotten)), key=lambda c: (-changes.forgotten[c], c))
    return [(c, int(changes.forgotten[c])) for c in order[:k] if changes.forgotten[c] > 0]
