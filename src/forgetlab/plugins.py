"""Extensions from installed packages: the ``forgetlab.plugins`` entry-point group.

A package of one's own adds methods, datasets, upstream evaluators, metrics or report sections to
forgetlab without a fork: its modules use the public decorators (``forgetlab.register_method``,
``register_dataset``, ``register_evaluator``, ``register_metric``, ``register_report_section``), and its
``pyproject.toml`` names those modules in the group::

    [project.entry-points."forgetlab.plugins"]
    my_lab = "my_lab.forgetlab_extensions"

Every registry calls :func:`load_plugins` before its first lookup, so the module is imported (and its
decorators run) once per process, before any name is resolved; an entry point that names a callable
(``"my_lab.ext:setup"``) is also called, with no arguments. The mechanism is Python's own
(:func:`importlib.metadata.entry_points`), as pytest's ``pytest11`` group.

Errors: a plugin that cannot be imported, or whose setup raises, is a :class:`PluginError` naming the
entry point and its distribution (one line on the command line, exit 2).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from forgetlab.errors import ForgetlabError

GROUP = "forgetlab.plugins"
_state = {"done": False}


class PluginError(ForgetlabError):
    """An installed forgetlab plugin failed to load."""


def load_plugins() -> None:
    """Import every ``forgetlab.plugins`` entry point once (in the order of their names).

    Re-entrant: a plugin whose import triggers a registry lookup does not load the group twice.
    """
    if _state["done"]:
        return
    _state["done"] = True
    for point in sorted(entry_points(group=GROUP), key=lambda point: point.name):
        where = f"'{point.name} = {point.value}'" + (f" of the package {point.dist.name}" if point.dist else "")
        try:
            loaded = point.load()
            if callable(loaded):
                loaded()
        except ForgetlabError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of foreign code becomes one line
            raise PluginError(
                f"the forgetlab plugin {where} failed to load ({type(error).__name__}: {error}); "
                f"fix or uninstall that package"
            ) from error
