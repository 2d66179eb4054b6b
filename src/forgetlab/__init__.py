"""forgetlab: measure what pretrained vision models forget when fine-tuned with parameter-efficient updates.

The library API (:mod:`forgetlab.api`): ``forgetlab.run``, ``forgetlab.load_run``, ``forgetlab.load_sweep``,
``forgetlab.report``, ``forgetlab.contextual``, ``forgetlab.anatomy``, ``forgetlab.explain``. Importing forgetlab imports nothing heavy; each function
imports what it needs.
"""

from forgetlab.errors import ConfigError, DataError, ForgetlabError

__all__ = ["ConfigError", "DataError", "ForgetlabError", "anatomy", "contextual", "explain", "load_run", "load_sweep", "register_dataset", "report", "resolve", "run"]


def __getattr__(name: str):
    if name == "register_dataset":  # a dataset from your own module: docs/extending.md
        from forgetlab.data.registry import register_dataset

        return register_dataset
    if name in ("run", "load_run", "load_sweep", "report", "resolve", "contextual", "anatomy", "explain", "Run"):
        from forgetlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'forgetlab' has no attribute '{name}'")
