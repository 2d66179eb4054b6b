"""forgetlab: measure what pretrained vision models forget when fine-tuned with parameter-efficient updates.

The library API (:mod:`forgetlab.api`): ``forgetlab.run``, ``forgetlab.load_run``, ``forgetlab.load_sweep``,
``forgetlab.report``, ``forgetlab.contextual``, ``forgetlab.anatomy``, ``forgetlab.explain``; and
``forgetlab.register_method``, the decorator that adds a method. Importing forgetlab imports nothing heavy; each
function imports what it needs.
"""

from forgetlab.errors import ConfigError, DataError, ForgetlabError

__all__ = [
    "ConfigError",
    "DataError",
    "ForgetlabError",
    "anatomy",
    "contextual",
    "explain",
    "load_run",
    "load_sweep",
    "report",
    "resolve",
    "run",
]


# The public decorators of extension points, each from the module that holds its registry.
REGISTRARS = {
    "register_method": "forgetlab.methods",
    "register_dataset": "forgetlab.data.registry",
    "register_metric": "forgetlab.analysis.metrics",
    "register_evaluator": "forgetlab.evaluators",
    "register_report_section": "forgetlab.reporting.sections",
}
__all__ += list(REGISTRARS)


def __getattr__(name: str):
    if name in REGISTRARS:
        import importlib

        return getattr(importlib.import_module(REGISTRARS[name]), name)
    if name in ("run", "load_run", "load_sweep", "report", "resolve", "contextual", "anatomy", "explain", "Run"):
        from forgetlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'forgetlab' has no attribute '{name}'")
