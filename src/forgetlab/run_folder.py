"""A run folder's identity, as the runner checks it before it writes: :func:`check_folder` refuses a
folder that holds another config (or results without one), :func:`open_folder` gives a new folder its
``config.yaml``, :func:`read_checkpoint` reads the committed resume point.

The folder's files and its commit protocol are :class:`forgetlab.results.RunFolder`'s; this module adds
what needs the config schema. Imports config, results and errors (below it); the runner imports it.
"""

from __future__ import annotations

from pathlib import Path

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, DataError
from forgetlab.results import RunFolder, atomic_write_text


def open_folder(folder: RunFolder, config) -> None:
    """A new folder gets the config; an existing one must hold the same config (then we resume)."""
    check_folder(folder, config)
    if not folder.config.exists():
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder.config, config_module.dump(config))


def check_folder(folder: RunFolder, config) -> None:
    """Refuse a folder that holds another config, or results without one; read-only.

    The stored config is read through the current schema first, so a folder written before an
    option existed still resumes when that option is at its default (its file is left as it is).
    Raises :class:`DataError` (no config, unreadable config) or :class:`ConfigError` (another config)."""
    resolved = _identity(config_module.to_dict(config))
    if not folder.config.exists() and (folder.progress.exists() or folder.matrix.exists()):
        raise DataError(
            f"{folder.path} holds results but no config.yaml, so they cannot be resumed under a known config; "
            "restore its config.yaml or delete that folder"
        )
    if folder.config.exists():
        import yaml

        # An option that no longer exists keeps the file as it is, so it shows up as a difference.
        try:
            stored = config_module.normalise(config_module.parse_yaml(folder.config.read_text()))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise DataError(f"{folder.config} is not readable YAML; restore it or delete that folder") from error
        if not isinstance(stored, dict):
            raise DataError(f"{folder.config} does not hold a config; restore it or delete that folder")
        stored = _identity(stored)
        if stored != resolved:
            differing = sorted(_differences(stored, resolved))
            raise ConfigError(
                f"{folder.path} holds a run with a different config (differs in: {', '.join(differing[:4])}); "
                "choose another name=... or delete that folder"
            )


def _identity(tree: dict) -> dict:
    """What a folder's config must match to resume: everything but where it lies and the trackers."""
    return {key: value for key, value in tree.items() if key not in config_module.NOT_IDENTITY}


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def read_checkpoint(path: Path) -> dict:
    """The tensors of a committed checkpoint (safetensors); a :class:`DataError` naming the file when
    it cannot be read."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise DataError(
            f"{path} is not a readable checkpoint ({type(error).__name__}); delete the run folder and run again"
        ) from error
