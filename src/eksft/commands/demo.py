"""``eksft demo``: the whole paper in miniature, offline, on a CPU (the ``eksft_demo`` application; docs/demo.md).

    eksft demo [--profile quick|full|real] [--output-dir DIR] [--seeds N] [--cache-dir DIR]

Pre-trains (or takes from the cache) a tiny base model, fine-tunes it with several objectives on identical data,
runs GRPO from each, evaluates every model, analyses drift and distribution shift, and writes ``DIR/report.md``.
``--profile real`` runs the SFT comparison on SmolLM2-135M-Instruct instead (``eksft_demo.real``): no GRPO, one
seed, held-out arithmetic word problems, and KL / NLL (forgetting) on held-out math and general text.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

# Threads that wait for a busy core should sleep rather than spin (read when OpenMP starts, so before torch runs
# anything); the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything the demo needs is built here
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eksft_demo.profiles import PROFILES  # noqa: E402

from ..errors import UserError
from .options import option, parse_options  # noqa: E402

DEFAULT_OUTPUT_DIR = "demo-output"
REAL = "real"  # the real-model profile (eksft_demo.real), not one of the tiny demo's PROFILES
ProfileName = Literal[tuple(sorted([*PROFILES, REAL]))]  # type: ignore[valid-type]


DESCRIPTION = (
    "The offline end-to-end demo: a tiny base model pre-trained here on a synthetic math world (cached), low-data SFT "
    "with several objectives on identical data and seeds, GRPO from each, evaluation (avg@n, pass@k) of every model "
    "on held-out problems, analysis (drift, KL to base, token-set IoU, plots) and DIR/report.md. Rerunning with the "
    "same settings and output directory resumes. Options: flags or a --config YAML file."
)


@dataclass
class DemoArguments:
    profile: ProfileName = option(
        "full",
        "full: what `make demo` runs (under 15 minutes on 2 cores); quick: every stage at toy sizes, what CI "
        "runs (under 3 minutes); real: SFT with each objective on the real SmolLM2-135M-Instruct, evaluated on "
        "held-out word problems, with forgetting measured on general text (about 20-30 minutes on 2 cores)",
    )
    output_dir: str = option(DEFAULT_OUTPUT_DIR, "where report.md, results.json, the plots and runs/ go", metavar="DIR")
    seeds: int = option(1, "run the SFT / GRPO / evaluation stages with seeds 0..N-1; the table shows mean ± std",
                        metavar="N")  # fmt: skip
    cache_dir: str | None = option(None, "where the pre-trained base model is cached (none: $EKSFT_CACHE, else "
                                         "~/.cache/eksft)", metavar="DIR")  # fmt: skip
    threads: int | None = option(None, "torch threads (none: 1, the fastest for the tiny model, and for the real one "
                                       "on a 2-core machine shared with other jobs)", metavar="N")  # fmt: skip
    overwrite: bool = option(False, "replace an output directory that holds another run (other profile or seeds)")
    no_progress: bool = option(False, "print no progress lines")


def main(argv: list[str]) -> int:
    (args,) = parse_options((DemoArguments,), argv, "eksft demo", DESCRIPTION)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")

    if args.profile == REAL:
        if args.seeds != 1:
            raise UserError("--profile real runs one seed (each seed costs about 20 minutes on 2 cores); drop --seeds")
        from eksft_demo.real import run_real_demo

        report = run_real_demo(None, args.output_dir, cache_dir=args.cache_dir, overwrite=args.overwrite,
                               progress=not args.no_progress, threads=args.threads)  # fmt: skip
        print(f"report: {report}", flush=True)
        return 0

    from eksft_demo.pipeline import run_demo

    report = run_demo(args.profile, args.output_dir, seeds=args.seeds, cache_dir=args.cache_dir,
                      overwrite=args.overwrite, progress=not args.no_progress, threads=args.threads)  # fmt: skip
    print(f"report: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
