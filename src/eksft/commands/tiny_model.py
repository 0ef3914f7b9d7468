"""``eksft tiny-model OUT_DIR``: write a tiny Qwen3-architecture model and its tokenizer, offline."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .options import option, parse_options

DESCRIPTION = (
    "Write a tiny Qwen3-architecture causal LM and a byte-level BPE tokenizer trained on the synthetic math world, in "
    "Hugging Face format, without any download. With --pretrain_steps N the model is pre-trained on the world corpus "
    "for N AdamW steps on the CPU, giving a weak 'base model' of that world. The directory is written atomically "
    "(built in a hidden sibling and renamed at the end)."
)


@dataclass
class TinyModelArguments:
    pretrain_steps: int = option(0, "AdamW pre-training steps on the world corpus (0: random weights)", metavar="N")
    seed: int = option(0, "seed for the weights and the pre-training data")
    overwrite: bool = option(False, "replace OUT_DIR if it exists and is not empty")
    hidden_size: int = option(64, "hidden size")
    num_layers: int = option(2, "number of decoder layers")
    num_heads: int = option(4, "attention heads")
    num_kv_heads: int = option(2, "key/value heads, dividing --num_heads")
    head_dim: int = option(16, "dimension of one attention head")
    intermediate_size: int = option(128, "MLP intermediate size")
    vocab_size: int = option(512, "target tokenizer vocabulary size")
    tie_word_embeddings: bool = option(True, "share the input embedding and the output head")
    no_progress: bool = option(False, "no progress bar while pre-training")


def main(argv: list[str]) -> int:
    args, positional = parse_options((TinyModelArguments,), argv, "eksft tiny-model", DESCRIPTION,
                                     positionals=(("out_dir", "directory to create (must be absent or empty)"),))  # fmt: skip
    if args.pretrain_steps < 0:
        raise UserError(f"--pretrain-steps must be >= 0, got {args.pretrain_steps}")

    from ..tiny_model import build_tiny_model  # deferred: loads torch and transformers

    result = build_tiny_model(
        positional.out_dir,
        pretrain_steps=args.pretrain_steps,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        head_dim=args.head_dim,
        intermediate_size=args.intermediate_size,
        vocab_size=args.vocab_size,
        tie_word_embeddings=args.tie_word_embeddings,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote tiny model to {result.path}")
    print(f"parameters: {result.num_parameters:,}  vocabulary: {result.vocab_size} tokens")
    if result.losses:
        print(f"pre-training: {len(result.losses)} steps, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    return 0
