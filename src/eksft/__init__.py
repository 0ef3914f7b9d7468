"""EKSFT: Entropy-KL Selective Fine-Tuning.

The public API, importable from the package itself::

    from eksft import EKSFTConfig, EKSFTTrainer          # the trainer: TRL's SFTTrainer with any objective
    from eksft import eksft_loss, objective_loss, OBJECTIVES   # the objectives on [B, T, V] logits
    from eksft import token_stats, chunked_token_stats   # per-token log-prob, entropy, KL (full or chunked)

The objective lives in ``eksft.objectives`` (formula in ``eksft/objectives/eksft.py``), the token statistics in
``eksft.stats`` and ``eksft.chunked``, the token selection in ``eksft.selection``. Names are imported lazily, as TRL
does, so that ``import eksft`` loads neither torch nor TRL until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "EKSFTConfig": "eksft.trainer",
    "EKSFTTrainer": "eksft.trainer",
    "OBJECTIVES": "eksft.objectives",
    "ObjectiveParams": "eksft.objectives",
    "compute_objective": "eksft.objectives",
    "eksft_loss": "eksft.objectives",
    "objective_loss": "eksft.objectives",
    "TokenStats": "eksft.stats",
    "token_stats": "eksft.stats",
    "chunked_token_stats": "eksft.chunked",
}

__all__ = [  # written out for linters and type checkers; the same names as _EXPORTS (tests/test_public_api.py)
    "OBJECTIVES",
    "EKSFTConfig",
    "EKSFTTrainer",
    "ObjectiveParams",
    "TokenStats",
    "__version__",
    "chunked_token_stats",
    "compute_objective",
    "eksft_loss",
    "objective_loss",
    "token_stats",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .chunked import chunked_token_stats
    from .objectives import OBJECTIVES, ObjectiveParams, compute_objective, eksft_loss, objective_loss
    from .stats import TokenStats, token_stats
    from .trainer import EKSFTConfig, EKSFTTrainer


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
