"""Where forgetlab keeps what it builds: the offline datasets, the pretrained offline backbones and its
own NLTK data folder. One folder, ``$FORGETLAB_HOME`` (default ``~/.cache/forgetlab``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The cache folder; created on first use."""
    path = Path(os.environ.get("FORGETLAB_HOME", Path.home() / ".cache" / "forgetlab")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
