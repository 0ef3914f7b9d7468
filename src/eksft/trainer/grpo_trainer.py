"""TRL's GRPO with eksft's safety net: ``GRPOConfig`` adds ``max_nonfinite_steps``, ``GRPOTrainer`` adds
``eksft.trainer.safety.SafeTraining`` (NaN/inf steps skipped, SIGINT/SIGTERM save a checkpoint, atomic checkpoints)
and reads a model given by path from safetensors files only.

Kept out of ``eksft.trainer``'s exports: importing ``trl.GRPOTrainer`` is slow, and only ``eksft grpo`` needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from .safety import DEFAULT_MAX_NONFINITE_STEPS, MAX_NONFINITE_STEPS_HELP, SafeTraining, check_max_nonfinite_steps
from .weights import use_safetensors


@dataclass
class GRPOConfig(trl.GRPOConfig):
    """``trl.GRPOConfig`` plus ``max_nonfinite_steps`` (stop after that many NaN/inf steps in a row; 0: never)."""

    max_nonfinite_steps: int = field(default=DEFAULT_MAX_NONFINITE_STEPS, metadata={"help": MAX_NONFINITE_STEPS_HELP})

    def __post_init__(self):
        check_max_nonfinite_steps(self.max_nonfinite_steps)
        super().__post_init__()


class GRPOTrainer(SafeTraining, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the safety net; a plain ``trl.GRPOConfig`` works too (default max_nonfinite_steps)."""

    def __init__(self, model, reward_funcs, args=None, *rest, **kwargs):
        if args is not None:  # without args TRL builds a default config and loads from the path itself
            use_safetensors(model, args, "model")
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
