"""``eksft grpo``: RL with verifiable math rewards after SFT, on ``trl.GRPOTrainer``, from a YAML recipe and/or flags.

    eksft grpo --config configs/grpo_tiny_cpu.yaml --model_name_or_path tiny-sft --dataset_name prompts.jsonl \
        --output_dir tiny-grpo

Options are the fields of ``eksft.grpo.GRPODataArguments`` (prompts, answers, rewards), ``trl.GRPOConfig`` (every
GRPO and ``TrainingArguments`` option: ``num_generations``, ``max_completion_length``, ``loss_type``,
``use_vllm``..., plus ``max_nonfinite_steps`` and ``log_file``: ``eksft.trainer.grpo_trainer.SafeGRPOConfig``) and ``trl.ModelConfig``
(model path, dtype, LoRA), parsed by ``trl.TrlParser``. Any directory that ``eksft sft`` wrote (model + tokenizer) is a valid ``--model_name_or_path``. ``use_vllm: true`` falls back to
``transformers`` generation, with a warning, where vLLM is not installed. Interruptions, NaN/inf steps and checkpoints
are handled as in ``eksft sft`` (``eksft.trainer.safety``).
"""

from __future__ import annotations

import sys

from ..adapters import is_adapter_dir, load_adapter_model
from ..errors import UserError
from ..trainer.checkpoints import resolve_checkpoint
from .recipe import create_trainer, load_policy_tokenizer, parse_recipe, train_and_save


def parse(argv: list[str]):
    from trl import ModelConfig

    from ..grpo import GRPODataArguments
    from ..trainer.grpo_trainer import SafeGRPOConfig

    data_args, config, model_args = parse_recipe((GRPODataArguments, SafeGRPOConfig, ModelConfig), argv, "eksft grpo")
    if not model_args.model_name_or_path:
        raise UserError("--model_name_or_path is required (e.g. the output directory of eksft sft)")
    return data_args, config, model_args


def main(argv: list[str]) -> int:
    data_args, config, model_args = parse(argv)

    from trl import get_peft_config, get_quantization_config

    from ..evaluation.generation import vllm_available
    from ..grpo import build_trainer, load_prompts, reward_functions

    reward_functions(data_args.reward_funcs)  # an unknown reward fails now, not after loading the model
    adapter = is_adapter_dir(model_args.model_name_or_path)
    if adapter and model_args.use_peft:
        raise UserError(f"--model_name_or_path {model_args.model_name_or_path} is a LoRA adapter folder: GRPO goes on "
                        "training that adapter, so drop --use_peft (or merge it first with eksft merge, and train a "
                        "new adapter on the merged model)")  # fmt: skip
    tokenizer = load_policy_tokenizer(model_args, config, adapters=True)
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {model_args.model_name_or_path!r} has no chat template; GRPO prompts are "
                        "chats: use the output directory of eksft sft, or add a chat_template to its tokenizer")  # fmt: skip
    dataset, report = load_prompts(data_args)
    if config.process_index == 0:
        print(report, flush=True)
    if config.use_vllm and not vllm_available():
        print("eksft grpo: warning: use_vllm is set but vLLM is not installed; generating with transformers instead "
              "(much slower for long completions; pip install 'eksft[vllm]')", file=sys.stderr, flush=True)  # fmt: skip
        config.use_vllm = False

    resume = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, config.process_index == 0)  # before loading the model: fail fast
    def build():
        model = model_args.model_name_or_path
        if adapter:  # the SFT adapter on its base, its weights trainable: GRPO goes on from it
            model = load_adapter_model(model, dtype=model_args.dtype or "auto", trainable=True,
                                       trust_remote_code=config.trust_remote_code)  # fmt: skip
        return build_trainer(model, config, dataset, data_args.reward_funcs, processing_class=tokenizer,
                             peft_config=get_peft_config(model_args),
                             quantization_config=get_quantization_config(model_args))  # fmt: skip

    trainer = create_trainer(build, model_args, config, model_given=adapter)
    return train_and_save(trainer, resume, "eksft grpo", argv, data_args.dataset_name)
