"""The ``eksft`` command: ``eksft <subcommand> [args]``.

Each subcommand lives in ``eksft.commands.<name>`` and exposes ``main(argv) -> int``. Imports are deferred so
that ``eksft --help`` does not load torch and transformers.
"""

from __future__ import annotations

import importlib
import sys

from .errors import UserError

# subcommand -> (module under eksft.commands, one-line help)
SUBCOMMANDS = {
    "sft": ("sft", "supervised fine-tuning with EKSFT or any baseline objective (TRL SFTTrainer)"),
    "grpo": ("grpo", "RL with verifiable math rewards after SFT (TRL GRPOTrainer)"),
    "eval": ("eval", "pass@k evaluation on AIME / AMC / HMMT / MATH-500 or a local JSONL"),
    "analyze": ("analyze", "parameter drift, distribution shift and entropy/KL token-set overlap, with plots"),
    "merge": ("merge", "merge a LoRA adapter folder into its base model, written as a full model directory"),
    "tiny-model": ("tiny_model", "write a tiny Qwen3-architecture model and tokenizer, offline"),
    "smollm2": ("smollm2", "write SmolLM2-135M-Instruct (a real chat model, float32 from GGUF) to a directory, offline"),
    "demo": ("demo", "the offline end-to-end demo on a tiny model"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: eksft <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `eksft <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"eksft: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"eksft.commands.{SUBCOMMANDS[name][0]}")
    try:
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"eksft {name}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse exits on --help and on bad usage, after printing the usage
        return exit_.code if isinstance(exit_.code, int) else 2
    except KeyboardInterrupt:
        print(f"eksft {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
