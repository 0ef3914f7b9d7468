"""``eksft sft``: supervised fine-tuning with EKSFT or any objective, from a YAML recipe and/or flags.

    eksft sft --config configs/tiny_cpu.yaml --model_name_or_path m --dataset_name data.json --output_dir o

Options are the fields of three dataclasses, parsed by ``trl.TrlParser`` (YAML via ``--config``, flags override):
``DataArguments`` below, ``EKSFTConfig`` (every ``trl.SFTConfig`` / ``TrainingArguments`` option plus the
objective and reference options) and ``trl.ModelConfig`` (model path, dtype, attention, LoRA via ``--use_peft``).
Order of work: parse and validate the config, load the tokenizer, read and check the data (printing a report), and
only then load the model and train, so that bad input fails fast. On success the model is saved in ``output_dir``;
SIGINT / SIGTERM save a checkpoint and exit 130 / 143 with the command that resumes; too many NaN/inf steps in a row
exit 2 (``eksft.trainer.safety``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..trainer.checkpoints import resolve_checkpoint
from .recipe import create_trainer, load_policy_tokenizer, parse_recipe, train_and_save


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
    from ..trainer.parallelism import check_parallelism

    data_args, config, model_args = parse_recipe((DataArguments, EKSFTConfig, ModelConfig), argv, "eksft sft")
    try:
        check_parallelism(config)  # before the tokenizer, the data and the model are read
    except ValueError as err:
        raise UserError(str(err)) from None
    if not model_args.model_name_or_path:
        raise UserError("--model_name_or_path is required (a local directory or a hub id)")
    if not data_args.dataset_name:
        raise UserError("--dataset_name is required (a .json / .jsonl / .parquet file or a hub dataset id)")
    return data_args, config, model_args


def main(argv: list[str]) -> int:
    data_args, config, model_args = parse(argv)

    from trl import get_peft_config, get_quantization_config

    from ..data import load_training_data
    from ..templates import apply_template_file
    from ..trainer import EKSFTTrainer

    tokenizer = load_policy_tokenizer(model_args, config)
    apply_template_file(tokenizer, config.chat_template_path)  # before the data are read against it
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
        assistant_only_loss=config.assistant_only_loss,
    )
    if report.split_conversations:  # TRL's completion mask trains the responses, not assistant masks
        config.assistant_only_loss = False
    if config.process_index == 0:
        print(report, flush=True)

    resume = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, config.process_index == 0)
    trainer = create_trainer(
        lambda: EKSFTTrainer(
            model_args.model_name_or_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
            quantization_config=get_quantization_config(model_args),
        ),
        model_args,
        config,
    )
    return train_and_save(trainer, resume, "eksft sft", argv, data_args.dataset_name)
