"""Prompts with gold answers -> verl's RL parquet layout (also readable by OpenRLHF).

    python examples/openr1_to_verl.py problems.jsonl data/verl/train.parquet              # {problem, answer, ...}
    python examples/openr1_to_verl.py Elliott/Openr1-Math-46k-8192 data/verl/openr1_rest.parquet \\
        --prompt-field prompt --answer-field reward_model.ground_truth --shuffle-seed 42 --skip-rows 3000

Rows are read and chosen by ``eksft.grpo.load_prompts``, the loader of ``eksft grpo``, so verl trains on the same
prompts as ``eksft grpo`` would: a string problem becomes one user turn with ``eksft eval``'s instruction (boxed
answer), a list of chat turns (the OpenR1 layout) is kept as it is, and ``--shuffle-seed S --skip-rows N`` is the
remainder after ``eksft sft --dataset_shuffle_seed S --max_rows N``. Each output row is::

    {"data_source": ..., "prompt": [{"role", "content"}, ...], "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": answer}, "extra_info": {"index": i, "split": split},
     "answer": answer}

``answer`` repeats the gold at the top level for OpenRLHF, whose ``--data.label_key`` reads top-level columns only.
Other input columns (a reference ``solution``, OpenR1's ``target``) are not carried over: GRPO does not use them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eksft.errors import UserError
from eksft.evaluation.benchmarks import is_local
from eksft.grpo import GRPODataArguments, load_prompts


def verl_rows(data_args: GRPODataArguments, data_source: str, split: str) -> tuple[list[dict], str]:
    """verl rows for the prompts ``eksft grpo`` would train on with ``data_args``, and the loader's report."""
    prompts, report = load_prompts(data_args)
    rows = [
        {
            "data_source": data_source,
            "prompt": example["prompt"],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": example["answer"]},
            "extra_info": {"index": index, "split": split},
            "answer": example["answer"],
        }
        for index, example in enumerate(prompts)
    ]
    return rows, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a .jsonl / .json / .parquet file or a hub dataset id")
    parser.add_argument("output", help="the .parquet file to write")
    parser.add_argument("--prompt-field", default="problem", help="a string or a list of chat turns (default problem)")
    parser.add_argument("--answer-field", default="answer", help="the gold; dots reach into nested fields")
    parser.add_argument("--data-source", help="data_source of every row (default: the file's stem or the hub id)")
    parser.add_argument("--split", default="train", help="hub dataset split to read; also written to extra_info")
    parser.add_argument("--shuffle-seed", type=int, help="shuffle with eksft's seeded shuffle first")
    parser.add_argument("--skip-rows", type=int, default=0, help="skip this many rows (of the shuffle)")
    parser.add_argument("--max-rows", type=int, help="keep at most this many rows after the skipped ones")
    args = parser.parse_args(argv)
    data_args = GRPODataArguments(
        dataset_name=args.source, dataset_train_split=args.split, prompt_field=args.prompt_field,
        answer_field=args.answer_field, dataset_shuffle_seed=args.shuffle_seed, skip_rows=args.skip_rows,
        max_rows=args.max_rows,
    )  # fmt: skip
    data_source = args.data_source or (Path(args.source).stem if is_local(args.source) else args.source)
    try:
        rows, report = verl_rows(data_args, data_source, args.split)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import datasets

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(args.output)
    print(f"{report}\nwrote {len(rows)} rows (data_source {data_source!r}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
