"""``eksft merge ADAPTER_DIR OUTPUT_DIR``: a LoRA adapter folder merged into its base, written as a full model.

eksft sft --config configs/tiny_cpu.yaml --use_peft true ... --output_dir out/lora
eksft merge out/lora out/lora-merged          # grpo, analyze and eval with any backend take out/lora-merged
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import option, parse_options

DESCRIPTION = (
    "Merge the LoRA adapter of ADAPTER_DIR (what `eksft sft --use_peft true` writes: adapter_config.json, the adapter "
    "weights and the tokenizer) into its base model and write the result to OUTPUT_DIR as a full model directory "
    "(safetensors in the base's dtype, the tokenizer, the model card). The base is the adapter config's "
    "base_model_name_or_path unless --base_model is given. OUTPUT_DIR appears complete or not at all."
)


@dataclass
class MergeArguments:
    base_model: str | None = option(None, "the base model's directory or hub id (none: the adapter config's)",
                                    metavar="DIR")  # fmt: skip
    overwrite: bool = option(False, "replace OUTPUT_DIR if it exists and is not empty")
    trust_remote_code: bool = option(False, "let a base model with a custom architecture run its own Python code")


def main(argv: list[str]) -> int:
    args, paths = parse_options((MergeArguments,), argv, "eksft merge", DESCRIPTION,
                                positionals=(("adapter_dir", "the adapter folder"),
                                             ("output_dir", "where the merged model goes")))  # fmt: skip
    from ..adapters import adapter_base, check_adapter_dir, merge_adapter  # deferred: loads torch and peft

    check_adapter_dir(paths.adapter_dir)
    base = adapter_base(paths.adapter_dir, args.base_model)
    print(f"merging the adapter {paths.adapter_dir} into {base}", flush=True)
    out = merge_adapter(paths.adapter_dir, paths.output_dir, args.base_model, overwrite=args.overwrite,
                        trust_remote_code=args.trust_remote_code)  # fmt: skip
    print(f"wrote the merged model to {out}")
    return 0
