"""Configuration of ``EKSFTTrainer``: TRL's ``SFTConfig`` plus the objective, its hyper-parameters and the reference.

Every ``ObjectiveParams`` field is a field here with the same name, default and help (generated from it, not written
twice), so a YAML recipe or a command-line flag reaches the objective unchanged. The hyper-parameters are validated when the config is built, before any model
is loaded: a bad ``rho`` fails with the field name and the value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, make_dataclass
from typing import get_type_hints

from transformers.utils import is_torch_bf16_gpu_available
from trl import SFTConfig

from ..objectives import OBJECTIVES, ObjectiveParams
from .reference import REF_MODEL_MODES
from .safety import DEFAULT_MAX_NONFINITE_STEPS, MAX_NONFINITE_STEPS_HELP, check_max_nonfinite_steps

DEFAULT_OBJECTIVE = "eksft"

# The objective's hyper-parameters as config fields: names, types, defaults and help taken from ObjectiveParams
ObjectiveArguments = make_dataclass(
    "ObjectiveArguments",
    [(f.name, get_type_hints(ObjectiveParams)[f.name], field(default=f.default, metadata=dict(f.metadata)))
     for f in fields(ObjectiveParams)],
)  # fmt: skip


@dataclass
class EKSFTConfig(ObjectiveArguments, SFTConfig):
    r"""
    Configuration class for [`EKSFTTrainer`]: every [`trl.SFTConfig`] parameter, plus the ones below.

    > Parameters that control the objective

    objective: training objective, a name of `eksft.objectives.OBJECTIVES` (default `"eksft"`). `loss_type` stays
        [`trl.SFTConfig`]'s own option: its `"nll"` and `"dft"` select those objectives, and an objective name given
        as `loss_type` (its name in eksft 0.1) still works, with a deprecation warning.
    rho ... rho1_ratio: the objective's hyper-parameters, declared once in `eksft.objectives.ObjectiveParams` (default,
        help, validation) and made fields here by `ObjectiveArguments`.

    > Parameters that control the reference model

    ref_model_mode: `"copy"` (frozen copy of the initial weights), `"adapter_disabled"` (the PEFT model with its
        adapters disabled, no second copy) or `"auto"` (adapter_disabled with a PEFT model, copy otherwise).
    ref_model_name_or_path: load the reference from here instead of copying the policy (copy mode).

    > Parameters that control the statistics and their logging

    use_chunked_stats: compute the token statistics from hidden states in chunks, never holding the full logits.
    token_stats_file: file in `output_dir` that gets one JSON line of metrics per logging step (None: no file).

    > Parameters that control the safety net

    max_nonfinite_steps: stop after this many NaN/inf optimizer steps in a row, each of them skipped (0: never stop).

    > Defaults that differ from [`trl.SFTConfig`]

    logging_steps: 1 (every step).
    bf16: `None` (auto) is on where the GPU supports bf16, off on a CPU.
    assistant_only_loss: `None` (auto) trains only the assistant turns of conversational `messages` data, as in
        the paper; prompt-completion data trains only the completion (TRL's `completion_only_loss`).
    """

    # Parameters that control the objective
    objective: str = field(
        default=DEFAULT_OBJECTIVE,
        metadata={"help": f"Training objective, one of: {', '.join(OBJECTIVES)}."},
    )
    loss_type: str = field(  # SFTConfig's, redeclared so that an objective name (its eksft 0.1 use) still parses
        default="nll",
        metadata={
            "help": "SFTConfig's loss: 'nll' or 'dft' select those objectives. The objective is `objective`; an "
            "objective name here (eksft 0.1's spelling) still works, with a deprecation warning."
        },
    )
    # ... and every field of ObjectiveParams (rho, lambda_entropy, ..., rho1_ratio), from ObjectiveArguments

    # Parameters that control the reference model
    ref_model_mode: str = field(
        default="auto",
        metadata={
            "help": "'copy': a frozen copy of the initial weights. 'adapter_disabled': the PEFT model with its "
            "adapters disabled (no second copy of the weights). 'auto': adapter_disabled with a PEFT config, "
            "copy otherwise. Objectives that need no reference (nll, dft, chord_phi, eaft, entropy_only) never "
            "build one."
        },
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Copy mode: load the reference from this path or hub id instead of copying the policy (its "
            "vocabulary must match the policy's)."
        },
    )

    # Parameters that control the statistics and their logging
    use_chunked_stats: bool = field(
        default=True,
        metadata={
            "help": "Compute log-probs, entropy and KL from hidden states and the LM head in chunks, never holding "
            "the [tokens x vocab] logits. False: from the full logits (the readable reference implementation). "
            "Prompt-learning PEFT (prompt / prefix / P-tuning) always uses the full logits: its virtual tokens exist "
            "only in the PEFT model's forward."
        },
    )
    token_stats_file: str | None = field(
        default="token_stats.jsonl",
        metadata={
            "help": "File in output_dir that gets one JSON line (step, epoch, every metric) per logging step, "
            "written by the main process; cut back to the checkpoint's step on a resume. None: no file."
        },
    )

    # Parameters that control the safety net (eksft.trainer.safety)
    max_nonfinite_steps: int = field(
        default=DEFAULT_MAX_NONFINITE_STEPS,
        metadata={"help": MAX_NONFINITE_STEPS_HELP},
    )

    # Parameters whose defaults differ from SFTConfig
    logging_steps: float = field(
        default=1,
        metadata={
            "help": "Log every X update steps (a float < 1 is a fraction of the training steps). Every step by "
            "default: the token statistics are what EKSFT runs are analysed with."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. None (auto): on when the GPU supports bf16, off on a CPU (TRL turns it "
            "on everywhere, which fails on a machine without a GPU)."
        },
    )
    assistant_only_loss: bool | None = field(
        default=None,
        metadata={
            "help": "Train only the assistant turns. None (auto): True for conversational 'messages' data, as in "
            "the paper; prompt-completion data trains only the completion (completion_only_loss)."
        },
    )

    def __post_init__(self):
        # Checked before TrainingArguments sets up devices, so that a typo fails fast and before any model loads
        self._objective_from_loss_type()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.ref_model_mode not in REF_MODEL_MODES:
            raise ValueError(f"ref_model_mode must be one of {', '.join(REF_MODEL_MODES)}; got {self.ref_model_mode!r}")
        if self.label_smoothing_factor:
            raise ValueError(
                f"label_smoothing_factor is not supported by EKSFTConfig (the objective is the loss); "
                f"got {self.label_smoothing_factor!r}"
            )
        check_max_nonfinite_steps(self.max_nonfinite_steps)
        self.objective_params()  # validates every hyper-parameter, naming the field and the value
        if self.bf16 is None and not self.fp16:
            self.bf16 = not self.use_cpu and is_torch_bf16_gpu_available()
        super().__post_init__()

    def _objective_from_loss_type(self) -> None:
        """Read ``loss_type`` (SFTConfig's option) into ``objective``, then set it to ``"nll"``: the loss is the
        objective's, never SFTTrainer's, and SFTTrainer accepts only its own names.

        SFTConfig's ``"dft"`` is the ``dft`` objective, and its deprecated ``"chunked_nll"`` is ``nll``; any other
        objective name is the option's old use (in eksft 0.1 it selected the objective): accepted with a
        ``FutureWarning``. A ``loss_type`` that contradicts an ``objective`` given too is an error.
        """
        loss_type = self.loss_type
        if loss_type in (None, "nll"):
            return
        chosen = {"chunked_nll": "nll"}.get(loss_type, loss_type)
        if loss_type == "chunked_nll":
            warnings.warn("loss_type='chunked_nll' is a deprecated alias of 'nll' (TRL); use 'nll'", FutureWarning,
                          stacklevel=4)  # fmt: skip
        elif loss_type != "dft" and loss_type in OBJECTIVES:
            warnings.warn(f"loss_type={loss_type!r}: the objective is now chosen with `objective` (loss_type is "
                          f"SFTConfig's own option); use objective={loss_type!r} (--objective {loss_type})",
                          FutureWarning, stacklevel=4)  # fmt: skip
        elif loss_type not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got loss_type={loss_type!r} (the "
                             "objective's option is `objective`)")  # fmt: skip
        if self.objective not in (DEFAULT_OBJECTIVE, chosen):
            raise ValueError(f"objective={self.objective!r} and loss_type={loss_type!r} disagree; give only "
                             f"objective (loss_type is SFTConfig's option, kept for compatibility)")  # fmt: skip
        self.objective, self.loss_type = chosen, "nll"

    def objective_params(self) -> ObjectiveParams:
        """The objective's hyper-parameters, taken from the fields of the same names."""
        return ObjectiveParams(**{f.name: getattr(self, f.name) for f in fields(ObjectiveParams)})
