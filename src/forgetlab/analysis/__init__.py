"""Everything derived from stored results: forgetting metrics, per-class and contextual forgetting.

Nothing here runs a model: the inputs are accuracy matrices and per-example upstream predictions read
from run folders (the single source of truth), so every figure can be recomputed from the files.
"""
