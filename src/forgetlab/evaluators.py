"""The upstream evaluators' name table: ``eval.upstream_evaluator`` names -> factories (timm's
``_registry.py`` pattern; it imports none of its members).

:mod:`forgetlab.evaluate` registers the built-in ``head`` (paper 1's frozen head), ``knn`` (paper 2's
k-NN) and ``probe`` (a linear probe refit on the current features) with :func:`register_evaluator`, as a
module of one's own does (``forgetlab.register_evaluator``, docs/extending.md); the config checks a name
against :func:`evaluator_names` when it is loaded.
"""

from __future__ import annotations

from typing import Callable

from forgetlab.errors import ConfigError
from forgetlab.plugins import load_plugins

# name -> factory(eval_config, upstream, crop_cache) -> evaluator; filled by register_evaluator.
_EVALUATORS: dict[str, Callable] = {}
# The built-in evaluators, registered by forgetlab.evaluate (on a floor above the config, which checks
# names against this table without importing it): their names are known before their factories.
BUILT_IN = ("head", "knn", "probe")


def register_evaluator(name: str) -> Callable:
    """Function decorator: enter a factory ``factory(eval_config, upstream, crop_cache) -> evaluator`` as the upstream
    evaluator ``name`` (the value of ``eval.upstream_evaluator``) and return it unchanged. ``eval_config`` is the run's
    :class:`forgetlab.config.EvalConfig`, ``upstream`` the upstream task (its ``train``, ``test`` and ``num_classes``),
    ``crop_cache`` the run's evaluation-crop cache or None. The evaluator is called as ``evaluator(model, dataset,
    runtime, *, description=...)`` (``runtime``: the run's :class:`~forgetlab.runtime.Runtime`) and returns an
    :class:`UpstreamResult`. Raises ``ValueError`` for a name registered twice."""

    def register(factory: Callable) -> Callable:
        if name in _EVALUATORS:
            raise ValueError(f"upstream evaluator '{name}' registered twice")
        _EVALUATORS[name] = factory
        return factory

    return register


def unregister_evaluator(name: str) -> None:
    """Remove the upstream evaluator ``name`` (a test's or a notebook's own); raises ``KeyError`` if there is none."""
    del _EVALUATORS[name]


def evaluator_names() -> tuple[str, ...]:
    """Every upstream evaluator's name: the built-in ``head``, ``knn`` and ``probe``, then those registered."""
    load_plugins()
    return (*BUILT_IN, *(name for name in _EVALUATORS if name not in BUILT_IN))


def evaluator_factory(name: str) -> Callable:
    """The factory registered as ``name``; raises :class:`ConfigError` (listing the names) if there is none."""
    load_plugins()
    if name not in _EVALUATORS:
        raise ConfigError(f"unknown eval.upstream_evaluator '{name}'; choose one of: {', '.join(evaluator_names())}")
    return _EVALUATORS[name]
