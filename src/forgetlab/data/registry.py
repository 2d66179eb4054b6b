"""Name -> dataset builder. A builder takes the data config and returns a :class:`TaskData`."""

from __future__ import annotations

from typing import Callable

from forgetlab.errors import ConfigError

_BUILDERS: dict[str, Callable] = {}


def register_dataset(name: str):
    def decorator(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"dataset '{name}' registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def _load_builtin() -> None:
    # Importing the modules registers their datasets.
    from forgetlab.data import offline  # noqa: F401


def dataset_names() -> list[str]:
    _load_builtin()
    return sorted(_BUILDERS)


def build_task(name: str, data_config) -> "TaskData":  # noqa: F821
    _load_builtin()
    if name not in _BUILDERS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](data_config)
