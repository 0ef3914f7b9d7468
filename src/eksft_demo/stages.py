"""The demo's stages on one model each: SFT, GRPO, evaluation; each writes its output directory whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from eksft.demo.world import Problem
from eksft.files import fresh_sibling, replace_directory
from eksft.loading import load_tokenizer

from .profiles import Profile
from .progress import Progress, _trainer_callback


def _staging(final: Path) -> Path:
    """A fresh hidden sibling of ``final``: stages write there and rename, so a finished directory is complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return fresh_sibling(final, "tmp")


def _train_into(trainer, staging: Path, final: Path) -> None:
    """Train without the Trainer's per-step prints, save the model into ``staging`` and rename it to ``final`` (an
    older ``final``, of a run being redone, goes only once this one is in)."""
    _quiet_trainer(trainer)
    trainer.train()
    trainer.save_model(str(staging))
    replace_directory(staging, final)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def train_sft(base_dir: Path, out_dir: Path, objective: str, rows: list[dict], profile: Profile, seed: int,
              progress: Progress) -> None:  # fmt: skip
    """One SFT run from the base model; the model, its tokenizer and ``token_stats.jsonl`` end up in ``out_dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from eksft.trainer import EKSFTConfig, EKSFTTrainer

    staging = _staging(out_dir)
    try:
        tokenizer = load_tokenizer(str(base_dir))
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = EKSFTConfig(
            output_dir=str(staging), objective=objective, seed=seed, data_seed=seed,
            max_steps=profile.sft_steps, per_device_train_batch_size=profile.sft_batch_size,
            learning_rate=profile.sft_lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
            max_length=256, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = EKSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer, callbacks=[_trainer_callback(progress, "loss")])  # fmt: skip
        _train_into(trainer, staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


GRPO_LOG_FILE = "grpo_log.jsonl"


def _quiet_trainer(trainer) -> None:
    """No per-step log dicts on stdout (``disable_tqdm`` makes the Trainer print them): our progress line reports
    the step, and every logged value is in the run directory."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_grpo(sft_dir: Path, out_dir: Path, rows: list[dict], profile: Profile, seed: int,
               progress: Progress) -> None:  # fmt: skip
    """GRPO from one SFT model; the model, its tokenizer and ``grpo_log.jsonl`` (per-step metrics) in ``out_dir``."""
    import torch
    from datasets import Dataset

    from eksft.grpo import build_trainer
    from eksft.trainer.grpo_trainer import SafeGRPOConfig

    staging = _staging(out_dir)
    try:
        tokenizer = load_tokenizer(str(sft_dir))
        config = SafeGRPOConfig(
            output_dir=str(staging), seed=seed, max_steps=profile.grpo_steps,
            num_generations=profile.grpo_generations,
            per_device_train_batch_size=profile.grpo_prompts_per_step * profile.grpo_generations,
            max_completion_length=profile.grpo_max_completion, temperature=1.0, learning_rate=profile.grpo_lr,
            lr_scheduler_type="constant", beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
            reward_weights=[1.0, 0.1], use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, model_init_kwargs={"dtype": torch.float32},
            log_file=GRPO_LOG_FILE,
        )  # fmt: skip
        trainer = build_trainer(str(sft_dir), config, Dataset.from_list(rows), ["accuracy", "format"],
                                processing_class=tokenizer,
                                callbacks=[_trainer_callback(progress, "rewards/accuracy_reward/mean")])  # fmt: skip
        _train_into(trainer, staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def evaluate_model(model_dir: Path, out_dir: Path, problems: list[Problem], profile: Profile, seed: int,
                   progress: Progress) -> dict:  # fmt: skip
    """avg@n / pass@k on the test problems with ``eksft.evaluation`` (resumable ``samples.jsonl`` in ``out_dir``);
    returns the metrics, the number of correct samples of each problem, and how many samples ended in a box."""

    from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec
    from eksft.evaluation.benchmarks import Problem as EvalProblem
    from eksft.evaluation.generation import HFGenerator, SamplingSettings
    from eksft.evaluation.runner import SAMPLES_FILE, EvalSettings, evaluate, format_prompt, read_samples

    benchmark = Benchmark(BenchmarkSpec("world-test", "eksft.demo.world Task(0), test split"),
                          [EvalProblem(i, p.question, p.gold) for i, p in enumerate(problems)])  # fmt: skip
    settings = EvalSettings(
        model=str(model_dir), num_samples=profile.eval_samples, ks=profile.eval_ks,
        temperature=profile.eval_temperature, top_p=profile.eval_top_p, max_new_tokens=profile.eval_max_new_tokens,
        seed=seed, prompt_template="{problem}", batch_size=profile.eval_batch_size,
    )  # fmt: skip
    tokenizer = load_tokenizer(str(model_dir))
    sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
    generator = HFGenerator(str(model_dir), tokenizer, sampling, device="cpu", dtype="float32")

    def generate(prompts: list[str], seeds: list[int]) -> list[str]:
        texts = generator.generate(prompts, seeds)
        progress.advance(len(prompts))
        return texts

    summary = evaluate([benchmark], generate, lambda text: format_prompt(tokenizer, text, settings), settings,
                       out_dir, progress=False)  # fmt: skip
    correct, boxed = [0] * len(problems), [0] * len(problems)
    for record in read_samples(out_dir / benchmark.name / SAMPLES_FILE):
        if record["sample"] < profile.eval_samples:
            correct[record["problem_id"]] += bool(record["correct"])
            boxed[record["problem_id"]] += record.get("answer") is not None  # a (last) boxed answer was found
    return {"metrics": summary["benchmarks"][benchmark.name]["metrics"], "correct": correct, "boxed": boxed}



def rl_reward_summary(log: Path) -> dict | None:
    """Mean accuracy reward of the first and the last quarter of the logged GRPO steps (None without a log).

    A quarter rather than a single step: each step sees only a few prompts, so one step's reward is noisy."""
    from eksft.files import read_jsonl

    if not log.is_file():
        return None
    rewards = [r["rewards/accuracy_reward/mean"] for _, r in read_jsonl(log, torn_tail_ok=True)
               if isinstance(r.get("rewards/accuracy_reward/mean"), (int, float))]  # fmt: skip
    if not rewards:
        return None
    window = max(1, len(rewards) // 4)
    return {"first": sum(rewards[:window]) / window, "last": sum(rewards[-window:]) / window, "steps": len(rewards)}
