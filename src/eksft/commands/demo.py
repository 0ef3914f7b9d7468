"""``eksft demo``: the whole paper in miniature, offline, on a CPU (the ``eksft_demo`` application; docs/demo.md).

    eksft demo [--profile quick|full|real] [--output-dir DIR] [--seeds N] [--cache-dir DIR]

Pre-trains (or takes from the cache) a tiny base model, fine-tunes it with several objectives on identical data,
runs GRPO from each, evaluates every model, analyses drift and distribution shift, and writes ``DIR/report.md``.
``--profile real`` runs the SFT comparison on SmolLM2-135M-Instruct instead (``eksft_demo.real``): no GRPO, one
seed, held-out arithmetic word problems, and KL / NLL (forgetting) on held-out math and general text.
"""

from __future__ import annotations

import argparse
import os
import sys

# Threads that wait for a busy core should sleep rather than spin (read when OpenMP starts, so before torch runs
# anything); the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything the demo needs is built here
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ..errors import UserError
from .options import parse_options  # noqa: E402

DEFAULT_OUTPUT_DIR = "demo-output"
REAL = "real"  # the real-model profile (eksft_demo.real), not one of the tiny demo's PROFILES


def build_parser() -> argparse.ArgumentParser:
    from eksft_demo.profiles import PROFILES

    parser = argparse.ArgumentParser(
        prog="eksft demo",
        description=(
            "The offline end-to-end demo: a tiny base model pre-trained here on a synthetic math world (cached), "
            "low-data SFT with several objectives on identical data and seeds, GRPO from each, evaluation (avg@n, "
            "pass@k) of every model on held-out problems, analysis (drift, KL to base, token-set IoU, plots) and "
            "DIR/report.md. Rerunning with the same settings and output directory resumes."
        ),
    )
    parser.add_argument("--profile", choices=sorted([*PROFILES, REAL]), default="full",
                        help="full: what `make demo` runs (under 15 minutes on 2 cores); quick: every stage at toy "
                             "sizes, what CI runs (under 3 minutes); real: SFT with each objective on the real "
                             "SmolLM2-135M-Instruct, evaluated on held-out word problems, with forgetting measured "
                             "on general text (about 20-30 minutes on 2 cores). Default: full")  # fmt: skip
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
                        help=f"where report.md, results.json, the plots and runs/ go (default: {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run the SFT / GRPO / evaluation stages with seeds 0..N-1; the table shows mean ± std")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="where the pre-trained base model is cached (default: $EKSFT_CACHE, else ~/.cache/eksft)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (default: 1, the fastest for the tiny model, and for the real one on a "
                             "2-core machine shared with other jobs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output directory that holds another run (other profile or seeds)")
    parser.add_argument("--no-progress", action="store_true", help="print no progress lines")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parse_options(parser, argv)
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
