"""What ``eksft sft`` and ``eksft grpo`` share: parsing a recipe, running the training with its three endings
(finished, interrupted by a signal, stopped by NaN/inf steps), and saving the final model so that a run killed during
that save leaves no half-written model. ``--resume_from_checkpoint`` is resolved by
``eksft.trainer.checkpoints.resolve_checkpoint``, which ``Trainer.train`` uses too."""

from __future__ import annotations

import shlex
import sys

from ..errors import UserError
from ..files import check_writable
from .options import parse_options


def parse_recipe(dataclass_types: tuple, argv: list[str], prog: str) -> tuple:
    """``(data, config, model)`` from ``--config recipe.yaml`` (optional) and flags (``eksft.commands.options``),
    with ``output_dir`` checked to be writable before anything is read or loaded."""
    parsed = parse_options(dataclass_types, argv, prog)
    check_writable(parsed[1].output_dir, "--output_dir")
    return parsed


def resume_command(prog: str, argv: list[str]) -> str:
    """The same command with ``--resume_from_checkpoint last`` (replacing any resume option it had)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif not arg.startswith("--resume_from_checkpoint="):
            kept.append(arg)
    return f"{prog} {shlex.join([*kept, '--resume_from_checkpoint', 'last'])}"


def load_policy_tokenizer(model_args, config, adapters: bool = False):
    """The tokenizer of ``--model_name_or_path``, after refusing pickle-only weights: both before any data is read.
    ``adapters``: a LoRA adapter folder is taken (its base's weights are checked)."""
    from ..adapters import adapter_base, is_adapter_dir
    from ..loading import check_safetensors_weights, load_tokenizer

    name = model_args.model_name_or_path
    tokenizer = load_tokenizer(name, "--model_name_or_path", revision=model_args.model_revision, adapters=adapters,
                               trust_remote_code=config.trust_remote_code)  # fmt: skip
    if adapters and is_adapter_dir(name):
        name = adapter_base(name)
    if (config.model_init_kwargs or {}).get("use_safetensors", True):
        check_safetensors_weights(name, "--model_name_or_path")
    return tokenizer


def create_trainer(build, model_args, config, model_given: bool = False):
    """``build()``, with the model loaded by TRL from its path as trl/scripts do (``model_given``: ``build`` passes a
    model object instead); what TRL and the reference reject (a model that cannot load, a combination of model, data
    and options) becomes a ``UserError``."""
    if not model_given:
        _model_init_kwargs(model_args, config)
    try:
        return build()
    except OSError as err:
        raise UserError(f"cannot load the model {model_args.model_name_or_path!r}: {err}") from None
    except ValueError as err:
        raise UserError(str(err)) from None


def _model_init_kwargs(model_args, config) -> None:
    config.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": config.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(config.model_init_kwargs or {}),
    }


def train_and_save(trainer, resume: str | None, prog: str, argv: list[str], dataset_name: str | None = None) -> int:
    """``trainer.train()``, then the final model in ``output_dir``; returns the exit code.

    SIGINT / SIGTERM: the trainer saved a checkpoint; say where and how to resume, and exit 128 + the signal number
    (130, 143) without saving a final model. Too many NaN/inf steps: ``NonFiniteTrainingError`` (a ``UserError``,
    exit 2) after ending the run on every process.
    """
    from ..trainer.safety import NonFiniteTrainingError, TrainingInterrupted

    try:
        trainer.train(resume_from_checkpoint=resume)
    except TrainingInterrupted as stop:
        if trainer.is_world_process_zero():  # before `end_run`: a launcher may tear the others down once one exits
            print(f"{prog}: {stop}; the model was not saved as final. Resume with:\n  {resume_command(prog, argv)}",
                  file=sys.stderr, flush=True)  # fmt: skip
        trainer.end_run()
        return 128 + stop.signum
    except NonFiniteTrainingError:
        trainer.end_run()
        raise
    trainer.save_final_model(dataset_name=dataset_name)  # with the tokenizer and the model card
    if trainer.is_world_process_zero():
        print(f"saved the model to {trainer.args.output_dir}", flush=True)
    trainer.end_run()
    return 0
