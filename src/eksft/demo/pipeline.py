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

import hashlib
import json
import os
import random
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..cache import cache_root
from ..errors import UserError
from .world import STYLES, Problem, Task, chat_messages, format_document

__all__ = [
    "PROFILES",
    "BaseModelConfig",
    "Profile",
    "Progress",
    "base_model_dir",
    "cache_root",
    "ensure_base_model",
    "pretraining_documents",
    "run_demo",
]

# Bump when the corpus recipe below changes: it is part of the cache key of the base model.
CORPUS_VERSION = 1
BASE_MODEL_FILE = "eksft_demo_base.json"  # written next to the weights: the config the model was built from
RESULTS_FILE, REPORT_FILE, SETTINGS_FILE = "results.json", "report.md", "demo.json"
SFT_STYLE = "stepwise"
# Offsets keep the problem streams of the stages apart (sft_dataset already offsets its own seed by 1_000_003).
_CHAT_CORPUS_SEED, _GRPO_SEED = 7_919, 2_000_003


# ---- configuration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelConfig:
    """The base model and its pre-training: everything here goes into the cache key."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    pretrain_steps: int = 4000
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 5e-3
    warmup_steps: int = 20
    plain_problems: int = 2000  # each written once per solution style, as plain text
    chat_problems: int = 2000  # each written once, as a chat conversation in a random style
    boxed_chat_fraction: float = 0.4  # of the chat conversations, those whose answer is boxed
    seed: int = 0

    def key(self) -> str:
        """A short hash of the config and the corpus recipe version: the cache directory's name."""
        text = json.dumps({**asdict(self), "corpus_version": CORPUS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Profile:
    """Sizes of every stage. ``estimates`` are seconds per unit on a quiet 2-core CPU, used only for the ETA."""

    name: str
    base: BaseModelConfig
    objectives: tuple[str, ...] = ("nll", "eksft", "dft", "mask_only", "random_mask")
    # SFT (low data: a few examples, many epochs)
    sft_examples: int = 32
    sft_steps: int = 40
    sft_batch_size: int = 8
    sft_lr: float = 1e-3
    # GRPO
    grpo_prompts: int = 512
    grpo_steps: int = 30
    grpo_prompts_per_step: int = 4
    grpo_generations: int = 8
    grpo_lr: float = 2e-4
    grpo_max_completion: int = 112
    # evaluation
    eval_problems: int = 64
    eval_samples: int = 8
    eval_ks: tuple[int, ...] = (1, 4, 8)
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 128
    # analysis: held-out conversations for KL(model || base) and the entropy histograms
    shift_texts: int = 64
    estimates: dict = field(default_factory=dict, compare=False, hash=False)

    def validate(self) -> None:
        from ..objectives import OBJECTIVES

        unknown = [name for name in self.objectives if name not in OBJECTIVES]
        if unknown:
            raise UserError(f"profile {self.name}: unknown objective(s) {unknown}; known: {', '.join(OBJECTIVES)}")
        if not all(1 <= k <= self.eval_samples for k in self.eval_ks):
            raise UserError(f"profile {self.name}: every k of {self.eval_ks} must be in 1..{self.eval_samples}")


PROFILES: dict[str, Profile] = {
    # What CI runs: every stage and every objective at toy sizes (the numbers are not meant to say anything).
    "quick": Profile(
        name="quick",
        base=BaseModelConfig(pretrain_steps=250, plain_problems=1000, chat_problems=1000),
        sft_examples=16,
        sft_steps=8,
        sft_batch_size=4,
        grpo_prompts=64,
        grpo_steps=3,
        grpo_prompts_per_step=2,
        grpo_generations=4,
        grpo_max_completion=96,
        eval_problems=16,
        eval_samples=4,
        eval_ks=(1, 2, 4),
        eval_max_new_tokens=96,
        shift_texts=16,
        estimates={"pretrain_step": 0.05, "sft_step": 0.08, "grpo_step": 0.6, "eval_sample": 0.012,
                   "shift_text": 0.01, "model": 1.0},  # fmt: skip
    ),
    # What `make demo` runs: sized to finish well under 15 minutes on 2 CPU cores, the base model included.
    "full": Profile(
        name="full",
        base=BaseModelConfig(),
        grpo_steps=40,
        eval_problems=128,
        eval_samples=16,
        eval_ks=(1, 4, 16),
        estimates={"pretrain_step": 0.05, "sft_step": 0.06, "grpo_step": 0.6, "eval_sample": 0.007,
                   "shift_text": 0.01, "model": 1.0},  # fmt: skip
    ),
}


# ---- progress ---------------------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Stage, step and an ETA for the whole run, on one line of stderr (rewritten in place on a terminal).

    The plan is a list of ``(task, estimated seconds)``. The ETA is the estimate of the work left, scaled by how
    much slower or faster than estimated the work done so far went, so it corrects itself as the run goes.
    """

    def __init__(self, plan: Sequence[tuple[str, float]], enabled: bool = True, stream=None,
                 interval: float | None = None) -> None:  # fmt: skip
        self.estimates = dict(plan)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.tty else 15.0)
        self.start = time.monotonic()
        self.done: set[str] = set()
        self.task: str | None = None
        self.label = ""
        self.total = 0
        self.step = 0
        self._task_start = self.start
        self._last_print = 0.0
        self._done_estimate = 0.0
        self._done_actual = 0.0
        self._note = ""

    # the ETA
    def eta(self) -> float:
        current = self.estimates.get(self.task, 0.0) if self.task else 0.0
        fraction = self.step / self.total if self.total else 0.0
        left = sum(v for k, v in self.estimates.items() if k not in self.done) - current * fraction
        spent_estimate = self._done_estimate + current * fraction
        spent_actual = self._done_actual + (time.monotonic() - self._task_start if self.task else 0.0)
        scale = spent_actual / spent_estimate if spent_estimate > 1.0 else 1.0
        return max(0.0, left * min(max(scale, 0.2), 20.0))

    def begin(self, task: str, label: str, total: int = 0) -> None:
        self.task, self.label, self.total, self.step, self._note = task, label, total, 0, ""
        self._task_start = time.monotonic()
        self._print(force=True)

    def update(self, step: int, note: str = "") -> None:
        self.step = min(step, self.total) if self.total else step
        self._note = note
        self._print()

    def advance(self, steps: int = 1) -> None:
        self.update(self.step + steps)

    def end(self) -> None:
        if self.task is None:
            return
        self._done_estimate += self.estimates.get(self.task, 0.0)
        self._done_actual += time.monotonic() - self._task_start
        self.done.add(self.task)
        self.step = self.total
        self._print(force=True, final=True)
        self.task = None

    def say(self, message: str) -> None:
        """A line of its own (a result, a note), below the progress line."""
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(f"[demo] {message}\n")
            self.stream.flush()

    def _print(self, force: bool = False, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self.interval:
            return
        self._last_print = now
        steps = f" {self.step}/{self.total}" if self.total else ""
        note = self._note if not final else ""
        line = (f"[demo {_duration(now - self.start)} | ETA {_duration(self.eta())}] {self.label}{steps}"
                f"{' ' + note if note else ''}{' done' if final else ''}")  # fmt: skip
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _trainer_callback(progress: Progress, metric: str | None = None):
    """A transformers callback that reports the trainer's step (and the latest value of ``metric``)."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        latest = ""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if metric and logs and isinstance(logs.get(metric), (int, float)):
                self.latest = f"({metric.split('/')[-2] if '/' in metric else metric} {logs[metric]:.3g})"

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(state.global_step, self.latest)

    return _Report()


# ---- data of the world ---------------------------------------------------------------------------------------------


def _chat_document(problem: Problem, style: str, boxed: bool) -> str:
    from .tokenizer import IM_END, IM_START

    solution = problem.solution(style)
    if not boxed:  # the same last sentence without the box: "The answer is 42."
        solution = solution.replace(f"\\boxed{{{problem.answer}}}", str(problem.answer))
    return f"{IM_START}user\n{problem.question}{IM_END}\n{IM_START}assistant\n{solution}{IM_END}\n"


def pretraining_documents(config: BaseModelConfig) -> list[str]:
    """The base model's corpus: every style of ``plain_problems`` problems as plain text, plus ``chat_problems``
    chat conversations in random styles, a ``boxed_chat_fraction`` of them with a boxed answer; shuffled."""
    rng = random.Random(f"eksft-demo-corpus/{config.seed}")
    docs = [format_document(p, style) for p in Task(config.seed).problems("train", config.plain_problems)
            for style in STYLES]  # fmt: skip
    for problem in Task(config.seed + _CHAT_CORPUS_SEED).problems("train", config.chat_problems):
        style = rng.choice(STYLES)
        docs.append(_chat_document(problem, style, boxed=rng.random() < config.boxed_chat_fraction))
    rng.shuffle(docs)
    return docs


def sft_rows(profile: Profile, seed: int) -> list[dict]:
    """The SFT conversations of one seed: few, one style, all boxed (``eksft.demo.world.sft_dataset``)."""
    from .world import sft_dataset

    return [{"messages": row["messages"]} for row in sft_dataset(profile.sft_examples, seed=seed, style=SFT_STYLE)]


def grpo_rows(profile: Profile, seed: int) -> list[dict]:
    """GRPO prompts of one seed: training-split problems that neither pre-training nor SFT drew."""
    problems = Task(_GRPO_SEED + seed).problems("train", profile.grpo_prompts)
    return [{"prompt": chat_messages(p), "answer": p.gold} for p in problems]


def held_out_problems(profile: Profile) -> list[Problem]:
    """The held-out problems every model is evaluated on (the test split, the same for every seed)."""
    return Task(0).problems("test", profile.eval_problems)


def shift_conversations(profile: Profile) -> list[list[dict]]:
    """Held-out conversations (test split, after the evaluation's problems), every solution style in turn."""
    problems = Task(0).problems("test", profile.eval_problems + profile.shift_texts)[profile.eval_problems :]
    return [chat_messages(p, STYLES[i % len(STYLES)]) for i, p in enumerate(problems)]


# ---- the base model and its cache -------------------------------------------------------------------------------------


def base_model_dir(config: BaseModelConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / f"demo-base-{config.key()}"


def _is_built(path: Path, config: BaseModelConfig) -> bool:
    try:
        recorded = json.loads((path / BASE_MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("config") == asdict(config) and (path / "config.json").is_file()


def ensure_base_model(config: BaseModelConfig, cache_dir: str | os.PathLike | None = None,
                      progress: Progress | None = None, threads: int | None = None) -> tuple[Path, bool]:  # fmt: skip
    """The cached base model for ``config``: ``(path, built now)``. Built (atomically) only when absent.

    The directory is named after ``config.key()``, so a changed recipe gets a new model and never a stale one.
    """
    from ..tiny_model import METADATA_FILE, PretrainConfig, build_tiny_model

    path = base_model_dir(config, cache_dir)
    if _is_built(path, config):
        return path, False
    if path.exists():  # a directory under our name that is not a finished build (an old layout): replace it
        shutil.rmtree(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the cache directory {path.parent}: {err}; use --cache-dir") from None
    documents = pretraining_documents(config)

    def on_step(step: int, loss: float) -> None:
        if progress is not None:
            progress.update(step, f"(loss {loss:.3f})")

    start = time.monotonic()
    # built under a temporary name and renamed: the cache never holds a half-trained model under the real name
    staging = path.parent / f".{path.name}.build-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        result = build_tiny_model(
            staging / "model", pretrain_steps=config.pretrain_steps, seed=config.seed,
            hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads, head_dim=config.hidden_size // config.num_heads,
            intermediate_size=config.intermediate_size,
            pretrain_config=PretrainConfig(batch_size=config.batch_size, seq_len=config.seq_len, lr=config.lr,
                                           warmup_steps=config.warmup_steps, num_threads=threads),
            progress=False, documents=documents, on_step=on_step,
        )  # fmt: skip
        meta = json.loads((result.path / METADATA_FILE).read_text(encoding="utf-8"))
        record = {"config": asdict(config), "key": config.key(), "corpus_version": CORPUS_VERSION,
                  "documents": len(documents), "num_parameters": result.num_parameters,
                  "final_loss": meta.get("final_loss"), "seconds": round(time.monotonic() - start, 1)}  # fmt: skip
        (result.path / BASE_MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(result.path, path)
        except OSError:
            if not _is_built(path, config):  # not another run that finished the same model first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, True


def base_model_info(path: Path) -> dict:
    return json.loads((path / BASE_MODEL_FILE).read_text(encoding="utf-8"))


# ---- stages -----------------------------------------------------------------------------------------------------------


def _staging(final: Path) -> Path:
    """A fresh hidden sibling of ``final``: stages write there and rename, so a finished directory is complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _finish(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def train_sft(base_dir: Path, out_dir: Path, objective: str, rows: list[dict], profile: Profile, seed: int,
              progress: Progress) -> None:  # fmt: skip
    """One SFT run from the base model; the model, its tokenizer and ``token_stats.jsonl`` end up in ``out_dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..trainer import EKSFTConfig, EKSFTTrainer

    staging = _staging(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = EKSFTConfig(
            output_dir=str(staging), loss_type=objective, seed=seed, data_seed=seed,
            max_steps=profile.sft_steps, per_device_train_batch_size=profile.sft_batch_size,
            learning_rate=profile.sft_lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
            max_length=256, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = EKSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer, callbacks=[_trainer_callback(progress, "loss")])  # fmt: skip
        _quiet_trainer(trainer)
        trainer.train()
        trainer.save_model(str(staging))
        _finish(staging, out_dir)
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
    from transformers import AutoTokenizer

    from ..grpo import build_trainer
    from ..trainer.grpo_trainer import GRPOConfig

    staging = _staging(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(sft_dir)
        config = GRPOConfig(
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
        _quiet_trainer(trainer)
        trainer.train()
        trainer.save_model(str(staging))
        _finish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def evaluate_model(model_dir: Path, out_dir: Path, problems: list[Problem], profile: Profile, seed: int,
                   progress: Progress) -> dict:  # fmt: skip
    """avg@n / pass@k on the test problems with ``eksft.evaluation`` (resumable ``samples.jsonl`` in ``out_dir``);
    returns the metrics, the number of correct samples of each problem, and how many samples ended in a box."""
    from transformers import AutoTokenizer

    from ..evaluation.benchmarks import Benchmark, BenchmarkSpec
    from ..evaluation.benchmarks import Problem as EvalProblem
    from ..evaluation.generation import HFGenerator, SamplingSettings
    from ..evaluation.runner import SAMPLES_FILE, EvalSettings, evaluate, format_prompt, read_samples

    benchmark = Benchmark(BenchmarkSpec("world-test", "eksft.demo.world Task(0), test split"),
                          [EvalProblem(i, p.question, p.gold) for i, p in enumerate(problems)])  # fmt: skip
    settings = EvalSettings(
        model=str(model_dir), num_samples=profile.eval_samples, ks=profile.eval_ks,
        temperature=profile.eval_temperature, top_p=profile.eval_top_p, max_new_tokens=profile.eval_max_new_tokens,
        seed=seed, prompt_template="{problem}", batch_size=profile.eval_batch_size,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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


# ---- the whole run ---------------------------------------------------------------------------------------------------


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

    from ..analysis.drift import parameter_drift
    from ..analysis.shift import distribution_shift, load_model
    from ..analysis.token_sets import read_token_stats, set_summary
    from ..files import json_safe
    from ..files import write_text_atomic as write_atomic
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
            tokenizer = _tokenizer(base_dir)
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


def rl_reward_summary(log: Path) -> dict | None:
    """Mean accuracy reward of the first and the last quarter of the logged GRPO steps (None without a log).

    A quarter rather than a single step: each step sees only a few prompts, so one step's reward is noisy."""
    from ..files import read_jsonl

    if not log.is_file():
        return None
    rewards = [r["rewards/accuracy_reward/mean"] for _, r in read_jsonl(log, torn_tail_ok=True)
               if isinstance(r.get("rewards/accuracy_reward/mean"), (int, float))]  # fmt: skip
    if not rewards:
        return None
    window = max(1, len(rewards) // 4)
    return {"first": sum(rewards[:window]) / window, "last": sum(rewards[-window:]) / window, "steps": len(rewards)}


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
