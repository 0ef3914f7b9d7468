"""The offline demo: the whole paper in miniature, on a CPU, in minutes.

Stages (one Python process, the library's own APIs; nothing is downloaded)::

    base      a tiny Qwen3-architecture model pre-trained here on the synthetic math world (cached between runs)
    sft       low-data SFT from the base with every objective of the profile, on identical data and seeds
    rl        GRPO from each SFT model, with the accuracy (+ format) reward of the world's Task
    eval      avg@n and pass@k of the base, each SFT model and each RL model on held-out test problems
    analysis  parameter drift and KL(model || base) on held-out conversations, token-set IoU over SFT training
    report    report.md with the paper-shaped table, the plots and a paragraph written from the numbers

Design of the world's data, so that the stages have something to show:

* The **pre-training corpus** holds every solution style of each problem as plain text (``Question: ... Answer:
  ...``) plus a smaller share of chat-format conversations, of which only some end in a ``\\boxed{}`` answer (the
  others say ``The answer is N.``). The base model can therefore chat and box, but does both only some of the time:
  the capability the SFT data asks for is latent, as in a real base model.
* The **SFT data** are a few conversations (low-data regime), all in one style (``stepwise``) and all boxed: plain
  SFT can overfit them and narrow the model's styles, while several styles in pre-training keep pass@k > pass@1
  possible for a model that keeps them.
* **GRPO prompts** and **test problems** come from other seeds / the held-out split of the world, so no stage sees
  another stage's problems (the test split never appears in any training data).

Seeds: with ``seeds=N`` the SFT data draw, the trainers' seeds, the GRPO seed and the evaluation's sampling seed are
``0 .. N-1``; the base model and the test problems are the same for every seed. Every objective of one seed gets the
same data and the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from eksft.errors import UserError
from eksft.loading import load_tokenizer

from .base_model import _is_built, base_model_dir, base_model_info, ensure_base_model
from .profiles import PROFILES, Profile
from .progress import Progress, _duration
from .stages import GRPO_LOG_FILE, _is_model_dir, evaluate_model, rl_reward_summary, train_grpo, train_sft
from .world_data import grpo_rows, held_out_problems, sft_rows, shift_conversations

RESULTS_FILE, REPORT_FILE, SETTINGS_FILE = "results.json", "report.md", "demo.json"

__all__ = ["REPORT_FILE", "RESULTS_FILE", "SETTINGS_FILE", "default_threads", "run_demo"]

def _quiet_libraries() -> None:
    """No per-call progress bars or deprecation chatter from the libraries: the demo prints its own progress."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(trl|transformers|torch)\b")


def default_threads() -> int:
    """Intra-op threads: one. Measured on 2 cores, a 64-wide model trains faster on one thread than on two even on a
    quiet machine (0.047 against 0.061 s per pre-training step), and threads that wait for a busy core are over 10x
    slower (``tiny_model.PretrainConfig``)."""
    return 1


def _plan(profile: Profile, seeds: Sequence[int], build_base: bool) -> list[tuple[str, float]]:
    e = profile.estimates
    plan = []
    if build_base:
        plan.append(("base", profile.base.pretrain_steps * e.get("pretrain_step", 0.1)))
    samples = profile.eval_problems * profile.eval_samples
    for seed in seeds:
        for objective in profile.objectives:
            plan.append((f"sft/{objective}/{seed}", e.get("model", 1) + profile.sft_steps * e.get("sft_step", 0.1)))
        for objective in profile.objectives:
            plan.append((f"rl/{objective}/{seed}", e.get("model", 1) + profile.grpo_steps * e.get("grpo_step", 1)))
        for label in ["base", *(f"{stage}-{o}" for stage in ("sft", "rl") for o in profile.objectives)]:
            plan.append((f"eval/{label}/{seed}", e.get("model", 1) + samples * e.get("eval_sample", 0.01)))
        for label in [f"{stage}-{o}" for stage in ("sft", "rl") for o in profile.objectives]:
            plan.append((f"analysis/{label}/{seed}", e.get("model", 1) + profile.shift_texts * e.get("shift_text", 0.01)))
    plan.append(("report", 5.0))
    return plan


def _check_output_dir(output_dir: Path, identity: dict, overwrite: bool) -> None:
    """A directory of an earlier run with the same settings is resumed; a run with other settings is replaced only
    with ``overwrite``; any other non-empty directory is refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} exists and is not a directory")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    settings = output_dir / SETTINGS_FILE
    if settings.is_file():
        try:
            previous = json.loads(settings.read_text(encoding="utf-8"))
        except ValueError:
            previous = None
        if previous == identity:
            return
        if not overwrite:
            raise UserError(f"--output-dir {output_dir} holds a demo run with other settings (profile, seeds or "
                            "base model); pass --overwrite to replace it, or choose another directory")  # fmt: skip
    else:  # never delete a directory that is not a demo run, even with overwrite
        raise UserError(f"--output-dir {output_dir} exists, is not empty and is not a demo run (no {SETTINGS_FILE}); "
                        "choose another directory")  # fmt: skip
    shutil.rmtree(output_dir)


def run_demo(
    profile: Profile | str = "full",
    output_dir: str | os.PathLike = "demo-output",
    seeds: int = 1,
    cache_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    stream=None,
) -> Path:
    """Run every stage (resuming what an earlier run with the same settings left in ``output_dir``) and write
    ``output_dir/report.md``; returns its path."""
    import torch

    from eksft.analysis.drift import parameter_drift
    from eksft.analysis.shift import distribution_shift, load_model
    from eksft.analysis.token_sets import read_token_stats, set_summary
    from eksft.files import json_safe
    from eksft.files import write_text_atomic as write_atomic

    from . import report as report_module

    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UserError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    profile.validate()
    if not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}")
    seed_list = list(range(seeds))
    output_dir = Path(output_dir).expanduser().absolute()
    identity = {"profile": asdict(replace(profile, estimates={})), "seeds": seed_list, "base_key": profile.base.key()}
    identity = json.loads(json.dumps(identity))  # as it reads back from demo.json (tuples become lists)
    _check_output_dir(output_dir, identity, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_FILE, RESULTS_FILE):  # they exist only once this run has written them
        (output_dir / name).unlink(missing_ok=True)
    write_atomic(output_dir / SETTINGS_FILE, json.dumps(identity, indent=2) + "\n")

    _quiet_libraries()
    threads = threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.monotonic()
    timings: dict[str, float] = {}
    base_dir = base_model_dir(profile.base, cache_dir)
    build_base = not _is_built(base_dir, profile.base)
    bar = Progress(_plan(profile, seed_list, build_base), enabled=progress, stream=stream)
    bar.say(f"profile {profile.name}: objectives {', '.join(profile.objectives)}; seeds {seed_list}; "
            f"{threads} thread(s); output {output_dir}")  # fmt: skip
    try:
        # 1. the base model
        if build_base:
            bar.begin("base", f"pre-training the base model ({base_dir.name})", profile.base.pretrain_steps)
        tick = time.monotonic()
        base_dir, built = ensure_base_model(profile.base, cache_dir, bar, threads)
        timings["base"] = time.monotonic() - tick
        if build_base:
            bar.end()
        base_info = base_model_info(base_dir)
        bar.say(("built and cached" if built else "reusing the cached") + f" base model {base_dir} "
                f"({base_info['num_parameters']:,} parameters, final pre-training loss {base_info['final_loss']:.3f})")

        problems = held_out_problems(profile)
        conversations = shift_conversations(profile)
        models: list[dict] = []
        token_values: dict[tuple[int, str], object] = {}
        for seed in seed_list:
            runs = output_dir / "runs" / f"seed{seed}"
            rows = sft_rows(profile, seed)
            # 2. SFT with every objective, identical data and seed
            for objective in profile.objectives:
                out = runs / f"sft-{objective}"
                bar.begin(f"sft/{objective}/{seed}", f"SFT {objective} (seed {seed}): step", profile.sft_steps)
                tick = time.monotonic()
                if not _is_model_dir(out):
                    train_sft(base_dir, out, objective, rows, profile, seed, bar)
                timings[f"sft/{objective}/{seed}"] = time.monotonic() - tick
                bar.end()
            # 3. GRPO from each SFT model
            prompts = grpo_rows(profile, seed)
            for objective in profile.objectives:
                out = runs / f"rl-{objective}"
                bar.begin(f"rl/{objective}/{seed}", f"GRPO from SFT {objective} (seed {seed}): step", profile.grpo_steps)
                tick = time.monotonic()
                if not _is_model_dir(out):
                    train_grpo(runs / f"sft-{objective}", out, prompts, profile, seed, bar)
                timings[f"rl/{objective}/{seed}"] = time.monotonic() - tick
                bar.end()
            # 4. evaluation of the base, every SFT and every RL model
            entries = [("base", "base", base_dir)]
            entries += [(objective, stage, runs / f"{stage}-{objective}") for stage in ("sft", "rl")
                        for objective in profile.objectives]  # fmt: skip
            for objective, stage, path in entries:
                label = "base" if stage == "base" else f"{stage}-{objective}"
                bar.begin(f"eval/{label}/{seed}", f"evaluating {label} (seed {seed}): sample",
                          profile.eval_problems * profile.eval_samples)  # fmt: skip
                tick = time.monotonic()
                result = evaluate_model(path, runs / "eval" / label, problems, profile, seed, bar)
                timings[f"eval/{label}/{seed}"] = time.monotonic() - tick
                bar.end()
                models.append({"label": label, "objective": objective, "stage": stage, "seed": seed,
                               "path": str(path), **result})  # fmt: skip
            # 5. analysis: drift and distribution shift from the base, token sets of SFT training
            base_model = load_model(base_dir, "cpu", "float32")
            tokenizer = load_tokenizer(str(base_dir))
            texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
            for entry in models:
                if entry["seed"] != seed or entry["stage"] == "base":
                    continue
                label = entry["label"]
                bar.begin(f"analysis/{label}/{seed}", f"analysis of {label} (seed {seed})")
                tick = time.monotonic()
                drift = parameter_drift(entry["path"], base_dir)
                model = load_model(entry["path"], "cpu", "float32")
                shift = distribution_shift(model, base_model, tokenizer, texts, batch_size=16, max_length=256,
                                           keep_tokens=True, progress=False)  # fmt: skip
                del model
                entry.update(drift=drift.relative, drift_groups=drift.per_group(), kl_to_base=shift.mean_kl,
                             entropy=shift.mean_entropy, base_entropy=shift.base_mean_entropy,
                             shift_tokens=shift.num_tokens)  # fmt: skip
                token_values[(seed, label)] = shift.tokens
                if entry["stage"] == "sft":
                    entry["token_sets"] = set_summary(read_token_stats(entry["path"]))
                else:
                    entry["rl_reward"] = rl_reward_summary(Path(entry["path"]) / GRPO_LOG_FILE)
                timings[f"analysis/{label}/{seed}"] = time.monotonic() - tick
                bar.end()
            for entry in models:  # the base's own row: zero by definition, its entropy from any shift run
                if entry["seed"] == seed and entry["stage"] == "base":
                    other = next((m for m in models if m["seed"] == seed and "base_entropy" in m), {})
                    entry.update(drift=0.0, kl_to_base=0.0, entropy=other.get("base_entropy"))
            del base_model

        # 6. the report: plots, results.json, then report.md last (its presence means the run finished)
        bar.begin("report", "writing the report")
        results = {
            "profile": profile.name,
            "seeds": seed_list,
            "objectives": list(profile.objectives),
            "settings": asdict(replace(profile, estimates={})),
            "base": {"path": str(base_dir), "built_now": built, **base_info},
            "threads": threads,
            "models": models,
            "timings": {k: round(v, 1) for k, v in timings.items()},
        }
        plots = report_module.make_plots(results, output_dir, token_values)
        results["plots"] = plots
        results["timings"]["total"] = round(time.monotonic() - started, 1)
        write_atomic(output_dir / RESULTS_FILE, json.dumps(json_safe(results), indent=2) + "\n")
        write_atomic(output_dir / REPORT_FILE, report_module.render_report(results))
        bar.end()
    finally:
        torch.set_num_threads(previous_threads)
    bar.say(f"finished in {_duration(time.monotonic() - started)}")
    return output_dir / REPORT_FILE


