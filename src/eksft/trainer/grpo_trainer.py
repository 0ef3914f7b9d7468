"""TRL's GRPO with eksft's safety net, under names of their own (not TRL's): ``SafeGRPOConfig`` adds
``max_nonfinite_steps`` and ``log_file`` to ``trl.GRPOConfig``; ``SafeGRPOTrainer`` adds ``eksft.trainer.safety``'s
``SafeTraining`` to ``trl.GRPOTrainer`` (NaN/inf steps skipped, SIGINT/SIGTERM save a checkpoint, atomic checkpoints,
the per-step log) and reads a model given by path from safetensors files only.

Kept out of ``eksft.trainer``'s exports: importing ``trl.GRPOTrainer`` is slow, and only ``eksft grpo`` needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from .paper import EKSFT_CITATION
from .safety import DEFAULT_MAX_NONFINITE_STEPS, MAX_NONFINITE_STEPS_HELP, SafeTraining, check_max_nonfinite_steps
from .weights import use_safetensors


@dataclass
class SafeGRPOConfig(trl.GRPOConfig):
    """``trl.GRPOConfig`` plus ``max_nonfinite_steps`` (stop after that many NaN/inf steps in a row; 0: never) and
    ``log_file`` (the per-step log)."""

    max_nonfinite_steps: int = field(default=DEFAULT_MAX_NONFINITE_STEPS, metadata={"help": MAX_NONFINITE_STEPS_HELP})
    log_file: str | None = field(
        default="grpo_log.jsonl",
        metadata={"help": "File in output_dir that gets one JSON line (step, rewards, every metric) per logging step, "
                  "written by the main process; cut back to the checkpoint's step on a resume. None: no file."},
    )  # fmt: skip

    def __post_init__(self):
        check_max_nonfinite_steps(self.max_nonfinite_steps)
        super().__post_init__()


class SafeGRPOTrainer(SafeTraining, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the safety net; a plain ``trl.GRPOConfig`` works too (default max_nonfinite_steps,
    no per-step log)."""

    step_log_option = "log_file"
    # the model card cites GRPO's paper (TRL's entry) and EKSFT's: the RL stage of the EKSFT pipeline
    _paper = {**trl.GRPOTrainer._paper, "citation": f"{trl.GRPOTrainer._paper['citation']}\n\n{EKSFT_CITATION}"}

    def __init__(self, model, reward_funcs, args=None, *rest, **kwargs):
        if args is not None:  # without args TRL builds a default config and loads from the path itself
            use_safetensors(model, args, "model")
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
