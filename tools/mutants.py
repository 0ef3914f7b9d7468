"""The bugs ``tools/mutation_check.py`` plants, one at a time: plausible one-line slips in the code whose output
users trust (statistics, selection, objectives, the chunked path, the trainer's scaling, resume, pass@k, grading).

``old`` must occur exactly once in ``file``; ``tests`` are pytest arguments run against the mutant from the
repository root. ``equivalent`` (a reason) marks a change that cannot alter any output: reported, not scored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    what: str
    tests: tuple[str, ...]
    equivalent: str = ""


TRAINER = "src/eksft/trainer/eksft_trainer.py"
TRAINER_TESTS = ("tests/trainer/test_scaling.py", "tests/trainer/test_trainer.py")
ORACLE = ("tests/objectives/test_oracle.py",)
CHUNKED = ("tests/test_chunked.py",)

MUTANTS: list[Mutant] = [
    # ---- the trainer's scaling and metrics (src/eksft/trainer/eksft_trainer.py) ----
    Mutant("trainer-mean-accumulation", TRAINER,
           "            loss = loss / self.current_gradient_accumulation_steps\n", "",
           "normalization='mean': the loss no longer divided by the accumulated micro-batches", TRAINER_TESTS),
    Mutant("trainer-world-size", TRAINER,
           "loss = loss * (self.accelerator.num_processes // self.get_tp_size())", "loss = loss",
           "normalization='token': the world-size factor dropped", TRAINER_TESTS),
    Mutant("trainer-loss-terms-not-rescaled", TRAINER,
           "share = float(num_items_in_batch) / max(stats.num_valid, 1)", "share = 1.0",
           "the logged ce / entropy_term / kl_term left as shares of the accumulated batch", TRAINER_TESTS),
    Mutant("trainer-rescale-every-metric", TRAINER,
           "value * share if name in LOSS_TERMS else value", "value * share",
           "every logged metric rescaled, not only the loss terms", TRAINER_TESTS),
    Mutant("trainer-metrics-not-token-weighted", TRAINER,
           "weights = [1.0 if name in PER_PROCESS else num_valid for name in names]",
           "weights = [1.0 for name in names]",
           "metrics averaged over processes without weighting by response tokens", TRAINER_TESTS),
    Mutant("trainer-tokens-not-restored", TRAINER,
           "                self._total_train_tokens = json.load(handle)[\"total_train_tokens\"]\n",
           "                pass\n",
           "resume: num_tokens counted from 0 again", ("tests/robustness/test_resume_logs.py",)),
    # ---- resume (src/eksft/trainer/safety.py, step_log.py) ----
    Mutant("resume-no-cut", "src/eksft/trainer/safety.py",
           "removed = step_log.cut_back(self.step_log_path, step) if self.step_log_path else 0", "removed = 0",
           "resume: the per-step log not cut back (steps after the checkpoint twice)",
           ("tests/robustness/test_resume_logs.py",)),
    Mutant("resume-torn-line-kept", "src/eksft/trainer/step_log.py",
           "            if number < len(lines) - 1:\n                kept.append(line)",
           "            kept.append(line)",
           "resume: a torn last line kept", ("tests/robustness/test_resume_logs.py",)),
    Mutant("resume-tied-head-warning", "src/eksft/trainer/safety.py",
           "load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]",
           "tied = tied", "resume: 'missing keys: lm_head.weight' for a tied head again",
           ("tests/robustness/test_resume_logs.py",)),
    # ---- objectives' metrics (src/eksft/objectives/base.py) ----
    Mutant("metrics-frac-kl-from-entropy-set", "src/eksft/objectives/base.py",
           '"frac_kl_set": kl_set.sum() / n,', '"frac_kl_set": entropy_set.sum() / n,',
           "frac_kl_set computed from the entropy set (copy-paste)", ORACLE),
    # ---- the chunked path (src/eksft/chunked.py) ----
    Mutant("chunked-no-finite-check", "src/eksft/chunked.py",
           "    if check_finite:\n        for name, value in", "    if False:\n        for name, value in",
           "the chunked path's NaN/inf check switched off", CHUNKED),
    # ---- grading (src/eksft/grading.py) ----
    Mutant("grading-gold-period-kept", "src/eksft/grading.py",
           'jobs.append((_TRAILING_PERIOD_RE.sub(r"\\1", gold), ', "jobs.append((gold, ",
           "a trailing period in the gold answer no longer stripped", ("tests/test_grading.py",)),
]  # fmt: skip
