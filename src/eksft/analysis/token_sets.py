"""The trainer's per-step metrics (``token_stats.jsonl``): reading them, and the entropy/KL token sets over training.

``EKSFTTrainer`` appends one JSON object per logging step to ``<output_dir>/token_stats.jsonl``: ``step``, ``epoch``,
``loss`` and the objective's metrics (``ce``, ``entropy_term``, ``kl_term``, ``mean_entropy``, ``mean_kl``,
``frac_masked``, ``frac_entropy_set``, ``frac_kl_set``, ``iou``). Evaluation steps log the same names with an
``eval_`` prefix; other loggers write ``train/`` prefixes. The set metrics, per step, over the valid tokens::

    frac_entropy_set = |E| / N      frac_kl_set = |K| / N      frac_masked = |M| / N   (M = E ∪ K or E ∩ K)
    iou = |E ∩ K| / |E ∪ K|          (the paper reports about 0.5: the two criteria pick different tokens)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UserError
from ..files import read_jsonl

__all__ = [
    "SET_METRICS",
    "TOKEN_STATS_FILE",
    "TRAINING_METRICS",
    "metric_series",
    "read_token_stats",
    "set_summary",
    "token_stats_path",
    "training_records",
]

TOKEN_STATS_FILE = "token_stats.jsonl"
# what the training-curve plot shows, in order
TRAINING_METRICS = ("loss", "ce", "entropy_term", "kl_term", "mean_entropy", "mean_kl", "frac_masked", "iou")
SET_METRICS = ("iou", "frac_masked", "frac_entropy_set", "frac_kl_set")
_STEP_KEYS = ("step", "global_step", "train/global_step", "train/step")


def token_stats_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/token_stats.jsonl``; a UserError if neither exists."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TOKEN_STATS_FILE
        if not path.is_file():
            raise UserError(f"{path.parent} has no {TOKEN_STATS_FILE}; is it the output_dir of an `eksft sft` run?")
    elif not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    return path


def read_token_stats(path: str | os.PathLike) -> list[dict]:
    """The records of a ``token_stats.jsonl`` (or of the run directory holding it), in file order; an unfinished last
    line (a run killed while it logged) is skipped with a warning, any other malformed line is an error
    (``eksft.files.read_jsonl``)."""
    return [record for _, record in read_jsonl(token_stats_path(path), torn_tail_ok=True)]


def _normalise(record: dict) -> dict:
    """Names without a ``train/`` prefix (other loggers add it); everything else as is."""
    return {key[len("train/") :] if key.startswith("train/") else key: value for key, value in record.items()}


def _step_of(record: dict) -> float | None:
    for key in _STEP_KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def training_records(records: list[dict]) -> list[dict]:
    """The records of training steps (not evaluation or the end-of-training summary), names normalised, each with a
    ``step`` (the line's position, from 1, when the file has none)."""
    out = []
    for position, record in enumerate(records, start=1):
        record = _normalise(record)
        if any(key.startswith(("eval_", "eval/", "test_")) for key in record) or "train_runtime" in record:
            continue
        step = _step_of(record)
        out.append({**record, "step": position if step is None else step})
    return out


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _iou_undefined(record: dict) -> bool:
    """Both sets empty: |E ∪ K| = 0, so the logged IoU (0 by convention) means nothing. Objectives that select no
    tokens (plain ``nll``, ``dft``, ...) log exactly that at every step."""
    return _number(record.get("frac_entropy_set")) == 0 and _number(record.get("frac_kl_set")) == 0


def metric_series(records: list[dict], name: str) -> list[tuple[float, float]]:
    """``[(step, value), ...]`` of one metric over the training records that have it (non-finite values kept).

    ``iou`` is left out at steps where both token sets are empty (it is undefined there)."""
    series = []
    for record in training_records(records):
        value = _number(record.get(name))
        if name == "iou" and _iou_undefined(record):
            continue
        if value is not None:
            series.append((float(record["step"]), value))
    return series


def set_summary(records: list[dict], names: tuple[str, ...] = SET_METRICS) -> dict[str, dict[str, float]]:
    """Per metric: ``first``, ``last``, ``mean`` (over logged steps, finite values only) and ``steps`` logged.

    Metrics a run never logged are left out, and so is ``iou`` for a run whose sets are always empty (plain
    ``nll`` logs zero fractions and a meaningless zero IoU).
    """
    summary = {}
    for name in names:
        values = [value for _, value in metric_series(records, name)]
        finite = [value for value in values if math.isfinite(value)]
        if values:
            summary[name] = {
                "first": values[0],
                "last": values[-1],
                "mean": sum(finite) / len(finite) if finite else math.nan,
                "steps": len(values),
            }
    return summary
