"""``eksft sft``: supervised fine-tuning with EKSFT or any objective, from a YAML recipe and/or flags.

    eksft sft --config configs/tiny_cpu.yaml --model_name_or_path m --dataset_name data.json --output_dir o

Options are the fields of three dataclasses, parsed by ``trl.TrlParser`` (YAML via ``--config``, flags override):
``DataArguments`` below, ``EKSFTConfig`` (every ``trl.SFTConfig`` / ``TrainingArguments`` option plus the
objective and reference options) and ``trl.ModelConfig`` (model path, dtype, attention, LoRA via ``--use_peft``).
Order of work: parse and validate the config, load the tokenizer, read and check the data (printing a report), and
only then load the model and train, so that bad input fails fast. On success the model is saved in ``output_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError
from .recipe import parse_recipe


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Training data: a local .json / .jsonl / .parquet file, or a Hugging Face dataset id."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset: configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Hub dataset: split to train on."})
    dataset_format: str = field(
        default="auto",
        metadata={"help": "Layout of the rows: auto, messages, sharegpt, prompt_completion, alpaca or openr1."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System turn added to every conversation that has none."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Train on at most this many rows."})
    dataset_shuffle_seed: int | None = field(
        default=None, metadata={"help": "Shuffle the rows with this seed before taking max_rows of them."}
    )
    bad_rows: str = field(
        default="error",
        metadata={"help": "A malformed row (missing field, unknown role): 'error' stops, 'drop' skips and counts it."},
    )


def parse(argv: list[str]):
    """The three config objects; any configuration problem becomes a ``UserError``."""
    from trl import ModelConfig

    from ..trainer import EKSFTConfig

    data_args, config, model_args = parse_recipe((DataArguments, EKSFTConfig, ModelConfig), argv, "eksft sft")
    if not model_args.model_name_or_path:
        raise UserError("--model_name_or_path is required (a local directory or a hub id)")
    if not data_args.dataset_name:
        raise UserError("--dataset_name is required (a .json / .jsonl / .parquet file or a hub dataset id)")
    return data_args, config, model_args


def main(argv: list[str]) -> int:
    try:
        data_args, config, model_args = parse(argv)
    except SystemExit as exit_:  # argparse exits on --help and on unknown flags (after printing the usage)
        return exit_.code if isinstance(exit_.code, int) else 2

    from transformers.trainer_utils import get_last_checkpoint
    from trl import get_peft_config, get_quantization_config

    from ..data import load_training_data
    from ..loading import load_tokenizer
    from ..trainer import EKSFTTrainer

    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        "--model_name_or_path",
        revision=model_args.model_revision,
        trust_remote_code=config.trust_remote_code,
    )
    dataset, report = load_training_data(
        data_args.dataset_name,
        tokenizer,
        config=data_args.dataset_config,
        split=data_args.dataset_train_split,
        layout=data_args.dataset_format,
        system_prompt=data_args.system_prompt,
        max_rows=data_args.max_rows,
        shuffle_seed=data_args.dataset_shuffle_seed,
        bad_rows=data_args.bad_rows,
        max_length=config.max_length,
    )
    if config.process_index == 0:
        print(report, flush=True)

    resume = config.resume_from_checkpoint
    if resume in ("true", "True", "last"):  # the newest checkpoint in output_dir
        resume = get_last_checkpoint(config.output_dir) if os.path.isdir(config.output_dir) else None
        if resume is None:
            raise UserError(
                f"--resume_from_checkpoint {config.resume_from_checkpoint}: no checkpoint in {config.output_dir}"
            )
    elif resume is not None and not os.path.isdir(resume):
        raise UserError(f"--resume_from_checkpoint: no checkpoint directory {resume}")

    # The model is loaded by TRL from its path, as trl/scripts/sft.py does
    config.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": config.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(config.model_init_kwargs or {}),
    }
    try:
        trainer = EKSFTTrainer(
            model_args.model_name_or_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
            quantization_config=get_quantization_config(model_args),
        )
    except OSError as err:
        raise UserError(f"cannot load the model {model_args.model_name_or_path!r}: {err}") from None
    except ValueError as err:  # TRL and the reference check the combination of model, data and options
        raise UserError(str(err)) from None

    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        print(f"saved the model to {config.output_dir}", flush=True)
    finish(trainer)
    return 0


def finish(trainer) -> None:
    """Wait for every process, then end the run: trackers, and the process group (transformers >= 5.18).

    The DDP wrapper is released first. Otherwise its reducer can be the last owner of a gloo process group and destroy
    it while holding the GIL, which deadlocks with gloo's worker threads (pytorch/pytorch#56297): on CPUs about one
    two-process run in four hung at exit.
    """
    trainer.accelerator.wait_for_everyone()
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()  # drops the accelerator's references to the wrapper, then collects garbage
    if hasattr(trainer, "end"):
        trainer.end()
