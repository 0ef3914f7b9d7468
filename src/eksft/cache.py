"""Where eksft keeps what it builds once and reuses: the demo's base models and the SmolLM2 float model."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$EKSFT_CACHE``, else ``~/.cache/eksft``."""
    chosen = cache_dir or os.environ.get("EKSFT_CACHE") or Path.home() / ".cache" / "eksft"
    return Path(chosen).expanduser().absolute()
