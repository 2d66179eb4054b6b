"""Everything derived from stored results: forgetting metrics, per-class and contextual forgetting.

Nothing here runs a model: the inputs are accuracy matrices and per-example upstream predictions read
from run folders (the single source of truth), so every figure can be recomputed from the files.

Imports run downwards: ``collect`` reads run folders through ``results`` (and ``config`` and ``data``
for a stored config and a task's metadata); the other modules compute from what ``collect`` returns.
Nothing here imports the report, the runner or a model: ``reporting`` draws and writes what this computes.
"""
