"""``eksft tiny-model OUT_DIR``: write a tiny Qwen3-architecture model and its tokenizer, offline."""

from __future__ import annotations

import argparse

from ..errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eksft tiny-model",
        description=(
            "Write a tiny Qwen3-architecture causal LM and a byte-level BPE tokenizer trained on the synthetic math "
            "world, in Hugging Face format, without any download. With --pretrain-steps N the model is pre-trained "
            "on the world corpus for N AdamW steps on the CPU, giving a weak 'base model' of that world. The "
            "directory is written atomically (built in a hidden sibling and renamed at the end)."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create (must be absent or empty)")
    parser.add_argument("--pretrain-steps", type=int, default=0, metavar="N",
                        help="AdamW pre-training steps on the world corpus (default: 0, random weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the pre-training data (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (default: 64)")
    parser.add_argument("--num-layers", type=int, default=2, help="number of decoder layers (default: 2)")
    parser.add_argument("--num-heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--num-kv-heads", type=int, default=2, help="key/value heads, dividing --num-heads (default: 2)")
    parser.add_argument("--head-dim", type=int, default=16, help="dimension of one attention head (default: 16)")
    parser.add_argument("--intermediate-size", type=int, default=128, help="MLP intermediate size (default: 128)")
    parser.add_argument("--vocab-size", type=int, default=512, help="target tokenizer vocabulary size (default: 512)")
    parser.add_argument("--tie-word-embeddings", action=argparse.BooleanOptionalAction, default=True,
                        help="share the input embedding and the output head (default: tied)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while pre-training")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.pretrain_steps < 0:
        raise UserError(f"--pretrain-steps must be >= 0, got {args.pretrain_steps}")

    from ..tiny_model import build_tiny_model  # deferred: loads torch and transformers

    result = build_tiny_model(
        args.out_dir,
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
