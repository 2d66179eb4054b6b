"""The method registry: a name -> class table that imports none of its members (timm's ``_registry.py``).

Each method module decorates its class with :func:`register_method`, so the class is in the table once
its module has been imported; the package (``forgetlab/methods/__init__.py``) imports every built-in
method, and Python imports the package before any module in it, so a lookup always sees them all.

Methods of installed packages come in through the ``forgetlab.plugins`` entry-point group
(:mod:`forgetlab.plugins`, as pytest's ``pytest11``): the first lookup imports every such entry point
once, and its module registers its methods with the same decorator (``forgetlab.register_method``)::

    # the plugin package's pyproject.toml
    [project.entry-points."forgetlab.plugins"]
    bitfit = "my_project.bitfit"

Imports run one way: ``methods/__init__`` -> every method -> ``methods.base`` -> this module, which imports
only :mod:`forgetlab.errors` and :mod:`forgetlab.plugins`.
"""

from __future__ import annotations

from forgetlab.errors import ConfigError
from forgetlab.plugins import load_plugins

# A method's ``name`` -> its class (a subclass of forgetlab.methods.base.Method); filled by register_method.
_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: enter ``cls`` in the table under ``cls.name`` and return it unchanged.

    Raises ``ValueError`` if a method of that name is already registered.
    """
    if cls.name in _METHODS:
        raise ValueError(f"method '{cls.name}' registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method's name (plugins' included), sorted."""
    load_plugins()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as ``name``; raises :class:`ConfigError` (listing the names) if there is none."""
    load_plugins()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(config):
    """The method ``config.name`` names, built from its ``config`` (the method's own config dataclass)."""
    return method_class(config.name)(config)
