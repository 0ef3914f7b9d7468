"""``eksft demo --profile real``: the paper's SFT comparison on a real pretrained model, offline, on a CPU.

Stages (one Python process; nothing is downloaded)::

    base      SmolLM2-135M-Instruct from the eksft cache (``eksft.smollm2.ensure_smollm2``; built once from the GGUF)
    sft       low-data SFT from the base with every objective, identical data and seed (``EKSFTTrainer``)
    eval      avg@n and pass@k of the base and each SFT model on held-out word problems (the world's test split)
    texts     KL(model || base), NLL and entropy per response token on held-out text of two kinds: MATH-500
              solutions (math in another style than the SFT data) and hand-written non-math conversations (forgetting)
    analysis  parameter drift per layer, the entropy/KL token-set IoU of SFT (``token_stats.jsonl``)
    report    report.md (table, verdicts with their noise, plots) and results.json, report.md last

Decisions, and why:

* **Task.** The synthetic world's ``sum`` word problems, asked with a one-shot prompt, chosen by measuring the
  base (docs/demo.md): MATH-500 (mixed levels, and level 1) and the world's problems asked zero-shot stayed at or
  below 5% avg@n; with one worked example in the prompt the base solved 4 of 32 samples (12.5%), inside the
  5-60% band that leaves SFT room to help and to hurt.
* **Grading.** Zero-shot, the base almost never boxes its answer ("So the final answer is 16."), so a sample's
  answer is its last ``\\boxed{}`` or, without one, its last number (``final_answer_text``), for every model alike.
* **Prompt.** Every model gets the same prompt, one-shot: a worked example (a training-split ``sum`` problem as a
  user turn, its ``stepwise`` solution as an assistant turn), then the problem as the user turn; no system turn
  of our own, so SmolLM2's template inserts its default system prompt (the model was tuned with it). Without the
  example the base solved none of the problems (docs/demo.md); with it, it solves some and boxes its answers. The
  SFT rows use the same prompt (TRL applies the template to the conversational prompt-completion rows), so the
  SFT models are evaluated on the prompt format they were trained on.
* **SFT data.** Conversational prompt-completion rows (the user turn as above, the reference solution as the
  completion): TRL then trains the completion tokens only, whatever the template (SmolLM2's has no
  ``{% generation %}`` markers). The completion is the world's ``stepwise`` solution, ending in a boxed answer:
  one annotator's style, few examples, several epochs.
* **Held-out text.** MATH-500 level-3 solutions and hand-written general conversations (``real_data``).
  The measures are taken on the assistant turn only (the prompt, identical for every model and
  mostly template, would dilute them), per text and then token-weighted; the per-text means give the standard
  errors of the report's verdicts. All models are measured in one pass over the texts, so the base runs once.
* **Threads.** ``default_threads``: 1 on a shared 2-core machine (see its docstring for the measurements).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from eksft.errors import UserError
from eksft.grading import extract_answer
from eksft.loading import load_tokenizer

from .pipeline import _check_output_dir, _quiet_libraries
from .progress import Progress, _duration, _trainer_callback
from .real_data import (
    KINDS,
    eval_problems,
    example_turns,
    general_conversations,
    held_out_conversations,
    math_solutions,
    prompt_turns,
    sft_rows,
)
from .real_texts import measure_texts, text_summary
from .stages import _is_model_dir, _staging, _train_into

__all__ = ["REAL_PROFILE", "RealProfile", "final_answer_text", "run_real_demo"]

RESULTS_FILE, REPORT_FILE, SETTINGS_FILE = "results.json", "report.md", "demo.json"
TEXT_KINDS = ("math", "general")


@dataclass(frozen=True)
class RealProfile:
    """Sizes of every stage of the real-model profile. ``estimates`` are seconds per unit on 2 shared CPU cores,
    used only for the ETA."""

    name: str = "real"
    objectives: tuple[str, ...] = ("nll", "eksft", "dft", "mask_only")
    seed: int = 0
    # SFT (low data: a few dozen examples, several epochs); the objectives' hyper-parameters are the paper's
    sft_examples: int = 24
    sft_steps: int = 18
    sft_batch_size: int = 4
    sft_lr: float = 1e-4
    sft_max_length: int = 256
    rho: float = 0.2
    lambda_entropy: float = 0.05
    lambda_kl: float = 0.05
    # evaluation on the world's test split
    eval_problems: int = 40
    eval_samples: int = 4
    eval_ks: tuple[int, ...] = (1, 2, 4)
    eval_temperature: float = 0.3
    eval_top_p: float = 1.0
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 80
    # held-out text
    math_texts: int = 24
    general_texts: int = 52
    text_max_length: int = 384
    estimates: dict = field(default_factory=dict, compare=False, hash=False)

    def validate(self) -> None:
        from eksft.objectives import OBJECTIVES

        unknown = [name for name in self.objectives if name not in OBJECTIVES]
        if unknown or not self.objectives:
            raise UserError(f"profile {self.name}: objectives {list(self.objectives)} must be a non-empty list of "
                            f"{', '.join(OBJECTIVES)}")  # fmt: skip
        if not all(1 <= k <= self.eval_samples for k in self.eval_ks):
            raise UserError(f"profile {self.name}: every k of {self.eval_ks} must be in 1..{self.eval_samples}")
        limits = {"eval_problems": 1000, "sft_examples": 1000, "math_texts": len(math_solutions()),
                  "general_texts": len(general_conversations())}  # fmt: skip
        for name, limit in limits.items():
            if not 1 <= getattr(self, name) <= limit:
                raise UserError(f"profile {self.name}: {name} must be in 1..{limit}, got {getattr(self, name)}")
        for name in ("sft_steps", "sft_batch_size", "eval_samples", "eval_max_new_tokens", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"profile {self.name}: {name} must be at least 1, got {getattr(self, name)}")


REAL_PROFILE = RealProfile(
    estimates={"sft_step": 5.0, "eval_sample": 2.4, "text_model": 40.0, "model": 3.0, "drift": 2.0},
)


# ---- stages -------------------------------------------------------------------------------------------------------


def train_sft(base_dir: Path, out_dir: Path, objective: str, rows: list[dict], profile: RealProfile,
              progress: Progress) -> None:  # fmt: skip
    """One SFT run from the base; the model, its tokenizer and ``token_stats.jsonl`` end up in ``out_dir``.

    Constant learning rate without warm-up: with a handful of steps a schedule would spend most of them at a
    fraction of the rate, and the point is to see what each objective does with the same update budget."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from eksft.trainer import EKSFTConfig, EKSFTTrainer

    staging = _staging(out_dir)
    try:
        tokenizer = load_tokenizer(str(base_dir))
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = EKSFTConfig(
            output_dir=str(staging), objective=objective, seed=profile.seed, data_seed=profile.seed,
            rho=profile.rho, lambda_entropy=profile.lambda_entropy, lambda_kl=profile.lambda_kl,
            max_steps=profile.sft_steps, per_device_train_batch_size=profile.sft_batch_size,
            learning_rate=profile.sft_lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_length=profile.sft_max_length, use_cpu=True, bf16=False, gradient_checkpointing=False,
            report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        trainer = EKSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                               callbacks=[_trainer_callback(progress, "loss")])  # fmt: skip
        _train_into(trainer, staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def evaluate_model(model_dir: Path, out_dir: Path, problems: list[dict], profile: RealProfile,
                   progress: Progress) -> dict:  # fmt: skip
    """avg@n / pass@k with ``eksft.evaluation`` (resumable ``samples.jsonl`` in ``out_dir``): the metrics, the
    number of correct samples of each problem and how many samples gave a boxed answer."""

    from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec
    from eksft.evaluation.benchmarks import Problem as EvalProblem
    from eksft.evaluation.generation import HFGenerator, SamplingSettings
    from eksft.evaluation.metrics import pass_at_k_table
    from eksft.evaluation.runner import SAMPLES_FILE, EvalSettings, evaluate
    from eksft.grading import grade_batch

    benchmark = Benchmark(BenchmarkSpec("world-test", f"eksft.demo.world test split, kinds {', '.join(KINDS)}"),
                          [EvalProblem(i, p["problem"], p["answer"]) for i, p in enumerate(problems)])  # fmt: skip
    settings = EvalSettings(
        model=str(model_dir), num_samples=profile.eval_samples, ks=profile.eval_ks,
        temperature=profile.eval_temperature, top_p=profile.eval_top_p, max_new_tokens=profile.eval_max_new_tokens,
        seed=profile.seed, prompt_template="{problem}", system_prompt=f"(one-shot) {example_turns()}",
        batch_size=profile.eval_batch_size,
    )  # fmt: skip  # the system_prompt field only records the example in run.json: prompt_of builds the prompt
    tokenizer = load_tokenizer(str(model_dir))
    sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
    generator: list = []  # loaded at the first call: a resumed run with every sample on disk never loads the model

    def generate(prompts: list[str], seeds: list[int]) -> list[str]:
        if not generator:
            generator.append(HFGenerator(str(model_dir), tokenizer, sampling, device="cpu", dtype="float32"))
        texts = generator[0].generate(prompts, seeds)
        progress.advance(len(prompts))
        return texts

    def prompt_of(problem: str) -> str:
        return tokenizer.apply_chat_template(prompt_turns(problem), tokenize=False, add_generation_prompt=True)

    summary = evaluate([benchmark], generate, prompt_of, settings, out_dir, progress=False)
    records = [r for r in _read_records(out_dir / benchmark.name / SAMPLES_FILE) if r["sample"] < profile.eval_samples]
    graded = grade_batch([final_answer_text(r["text"]) for r in records], [r["gold"] for r in records])
    correct, boxed = [0] * len(problems), [0] * len(problems)
    for record, ok in zip(records, graded, strict=True):
        correct[record["problem_id"]] += bool(ok)
        boxed[record["problem_id"]] += record.get("answer") is not None
    n = profile.eval_samples
    metrics = pass_at_k_table({i: [True] * c + [False] * (n - c) for i, c in enumerate(correct)}, profile.eval_ks)
    metrics = {f"avg@{n}": metrics.pop("avg@n"), **metrics}
    boxed_only = summary["benchmarks"][benchmark.name]["metrics"][f"avg@{n}"]
    return {"metrics": metrics, "correct": correct, "boxed": boxed, "boxed_only_avg": boxed_only}


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def final_answer_text(completion: str) -> str:
    """The completion as the grader should read it: unchanged when it has a boxed answer, else its last number put
    in a box (``eksft.grading`` reads only boxes).

    Why: asked zero-shot, SmolLM2-135M-Instruct almost never boxes (1 of 528 samples in the measurements of
    docs/demo.md); it ends with "So the final answer is 16." Grading boxes only would score such a model 0
    whatever it computed, and would measure the format, not the arithmetic. The same rule applies to every model."""
    if extract_answer(completion) is not None:
        return completion
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", completion))
    return f"{completion}\n\\boxed{{{numbers[-1]}}}" if numbers else completion


def _read_records(path: Path) -> list[dict]:
    """The sample records with their texts (``read_samples`` leaves the texts out); only whole lines."""
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


# ---- the whole run ------------------------------------------------------------------------------------------------


def default_threads() -> int:
    """One intra-op thread. Measured on this project's 2-core machine while other jobs ran on it (load average
    about 3): SmolLM2-135M took 6.8 s on one thread and 13.6 s on two for the prefill of 32 x 80 tokens, and
    13.5 s against 30.8 s for 32 decoding steps of a batch of 32: a thread that waits for a busy core stalls the
    other. On a quiet machine ``--threads 2`` can be faster."""
    return 1


def _plan(profile: RealProfile, build_base: bool) -> list[tuple[str, float]]:
    e = profile.estimates
    plan = [("base", 40.0)] if build_base else []
    for objective in profile.objectives:
        plan.append((f"sft/{objective}", e.get("model", 3) + profile.sft_steps * e.get("sft_step", 12)))
    samples = profile.eval_problems * profile.eval_samples * profile.eval_max_new_tokens / 256
    for label in ["base", *profile.objectives]:
        plan.append((f"eval/{label}", e.get("model", 3) + samples * e.get("eval_sample", 3)))
    texts = (profile.math_texts + profile.general_texts) / 76
    for kind in TEXT_KINDS:
        plan.append((f"texts/{kind}", (1 + len(profile.objectives)) * texts * e.get("text_model", 32) / 2))
    plan.append(("analysis", len(profile.objectives) * e.get("drift", 4)))
    plan.append(("report", 15.0))
    return plan


def _write_json(path: Path, value) -> None:
    from eksft.files import json_safe, write_text_atomic

    write_text_atomic(path, json.dumps(json_safe(value), indent=2) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_real_demo(
    profile: RealProfile | None = None,
    output_dir: str | os.PathLike = "demo-output",
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

    from eksft.smollm2 import _is_built as smollm2_is_built
    from eksft.smollm2 import ensure_smollm2, smollm2_cache_dir

    profile = profile or REAL_PROFILE
    profile.validate()
    output_dir = Path(output_dir).expanduser().absolute()
    identity = json.loads(json.dumps({"profile": asdict(replace(profile, estimates={})), "model": "smollm2-135m"}))
    _check_output_dir(output_dir, identity, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_FILE, RESULTS_FILE):  # they exist only once this run has written them
        (output_dir / name).unlink(missing_ok=True)
    _write_json(output_dir / SETTINGS_FILE, identity)

    _quiet_libraries()
    threads = threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.monotonic()
    timings: dict[str, float] = {}
    build_base = not smollm2_is_built(smollm2_cache_dir(cache_dir))
    bar = Progress(_plan(profile, build_base), enabled=progress, stream=stream)
    bar.say(f"profile {profile.name}: SmolLM2-135M-Instruct; objectives {', '.join(profile.objectives)}; "
            f"{threads} thread(s); output {output_dir}")  # fmt: skip
    try:
        bar.begin("base", "SmolLM2-135M-Instruct from the GGUF file into the cache") if build_base else None
        tick = time.monotonic()
        base_dir, built = ensure_smollm2(cache_dir)
        timings["base"] = time.monotonic() - tick
        bar.end() if build_base else None
        bar.say(("built and cached" if built else "reusing the cached") + f" base model {base_dir}")
        models = _sft_and_eval(profile, base_dir, output_dir, bar, timings)
        texts = _texts(profile, base_dir, output_dir, models, bar, timings)
        _analysis(profile, base_dir, models, bar, timings)

        from . import real_report

        bar.begin("report", "writing the report")
        results = {
            "profile": profile.name,
            "seeds": [profile.seed],
            "objectives": list(profile.objectives),
            "settings": asdict(replace(profile, estimates={})),
            "base": {"path": str(base_dir), "built_now": built, "model": "SmolLM2-135M-Instruct"},
            "threads": threads,
            "models": models,
            "texts": texts,
            "data": real_report.data_description(profile),
            "timings": {k: round(v, 1) for k, v in timings.items()},
        }
        results["plots"] = real_report.make_plots(results, output_dir)
        results["timings"]["total"] = round(time.monotonic() - started, 1)
        _write_json(output_dir / RESULTS_FILE, results)
        from eksft.files import write_text_atomic

        write_text_atomic(output_dir / REPORT_FILE, real_report.render_report(results))
        bar.end()
    finally:
        torch.set_num_threads(previous_threads)
    bar.say(f"finished in {_duration(time.monotonic() - started)}")
    return output_dir / REPORT_FILE


def _sft_and_eval(profile: RealProfile, base_dir: Path, output_dir: Path, bar: Progress,
                  timings: dict) -> list[dict]:  # fmt: skip

    runs = output_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rows = sft_rows(profile, load_tokenizer(str(base_dir)))
    _write_json(runs / "sft_data.json", rows)
    for objective in profile.objectives:
        out = runs / f"sft-{objective}"
        bar.begin(f"sft/{objective}", f"SFT {objective}: step", profile.sft_steps)
        tick = time.monotonic()
        if not _is_model_dir(out):
            train_sft(base_dir, out, objective, rows, profile, bar)
        timings[f"sft/{objective}"] = time.monotonic() - tick
        bar.end()
    problems = eval_problems(profile)
    models = []
    for objective, stage, path in [("(none)", "base", base_dir)] + [(o, "sft", runs / f"sft-{o}")
                                                                   for o in profile.objectives]:  # fmt: skip
        label = "base" if stage == "base" else objective
        bar.begin(f"eval/{label}", f"evaluating {label}: sample", profile.eval_problems * profile.eval_samples)
        tick = time.monotonic()
        result = evaluate_model(path, runs / "eval" / label, problems, profile, bar)
        timings[f"eval/{label}"] = time.monotonic() - tick
        bar.end()
        models.append({"label": label, "objective": objective, "stage": stage, "seed": profile.seed,
                       "path": str(path), **result})  # fmt: skip
    return models


def _texts(profile: RealProfile, base_dir: Path, output_dir: Path, models: list[dict], bar: Progress,
           timings: dict) -> dict:  # fmt: skip
    """KL / NLL / entropy on both kinds of held-out text, every model in one pass (saved, so a rerun skips it)."""

    from eksft.analysis.shift import load_model

    saved = output_dir / "runs" / "texts.json"
    previous = _read_json(saved)
    labels = [m["label"] for m in models if m["stage"] == "sft"]
    if isinstance(previous, dict) and all(set(previous.get(kind, {})) == {"base", *labels} for kind in TEXT_KINDS):
        return previous
    tokenizer = load_tokenizer(str(base_dir))
    base_model = load_model(base_dir, "cpu", "float32")
    loaded = {m["label"]: load_model(m["path"], "cpu", "float32") for m in models if m["stage"] == "sft"}
    conversations = held_out_conversations(profile)
    texts = {}
    for kind in TEXT_KINDS:
        bar.begin(f"texts/{kind}", f"KL, NLL, entropy on held-out {kind} text: text", len(conversations[kind]))
        tick = time.monotonic()
        sums = measure_texts(loaded, base_model, tokenizer, conversations[kind], profile.text_max_length, bar)
        texts[kind] = {label: text_summary(values) for label, values in sums.items()}
        timings[f"texts/{kind}"] = time.monotonic() - tick
        bar.end()
    _write_json(saved, texts)
    return texts


def _analysis(profile: RealProfile, base_dir: Path, models: list[dict], bar: Progress, timings: dict) -> None:
    """Parameter drift of each SFT model (total and per layer) and the token-set summary of its training."""
    from eksft.analysis.drift import parameter_drift
    from eksft.analysis.token_sets import read_token_stats, set_summary

    bar.begin("analysis", "parameter drift and token sets: model", len(profile.objectives))
    tick = time.monotonic()
    for i, entry in enumerate(m for m in models if m["stage"] == "sft"):
        saved = Path(entry["path"]).parent / f"analysis-{entry['label']}.json"  # a rerun reads it back
        values = _read_json(saved)
        if not isinstance(values, dict):
            drift = parameter_drift(entry["path"], base_dir)
            values = {"drift": drift.relative, "drift_groups": drift.per_group(),
                      "token_sets": set_summary(read_token_stats(entry["path"]))}  # fmt: skip
            _write_json(saved, values)
        entry.update(values)
        bar.update(i + 1)
    for entry in models:
        if entry["stage"] == "base":
            entry["drift"] = 0.0
    timings["analysis"] = time.monotonic() - tick
    bar.end()
