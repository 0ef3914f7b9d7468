"""An evaluation's results sent to experiment trackers: ``eksft eval --report_to wandb`` (or tensorboard, trackio,
mlflow, comet_ml...), the names ``TrainingArguments.report_to`` takes, through accelerate's trackers as the Trainer's
runs go through its integrations.

One run per evaluation: its config is the sampling settings, and one logged step holds every metric as
``<benchmark>/<metric>`` (``aime24/avg@32``, ``math500/pass@8``), plus ``average/<metric>`` over the benchmarks.
"""

from __future__ import annotations

import os

from ..errors import UserError

__all__ = ["check_trackers", "flat_metrics", "report_results"]


def flat_metrics(summary: dict) -> dict[str, float]:
    """The metrics of ``results.json`` as one flat mapping of ``<benchmark>/<metric>`` to a number."""
    values = {f"{name}/{metric}": value for name, result in summary["benchmarks"].items()
              for metric, value in result["metrics"].items()}  # fmt: skip
    values.update({f"average/{metric}": value for metric, value in (summary.get("average") or {}).items()})
    return {key: float(value) for key, value in values.items() if isinstance(value, (int, float))}


def check_trackers(report_to: list[str]) -> None:
    """A ``UserError`` for an unknown tracker name or one whose package is missing: checked before any sampling."""
    from accelerate import PartialState
    from accelerate.tracking import filter_trackers
    from accelerate.utils import LoggerType

    known = {kind.value for kind in LoggerType} - {"all"}
    for name in report_to:
        if name not in known:
            raise UserError(f"--report_to {name}: unknown tracker; the trackers are: {', '.join(sorted(known))}")
    PartialState()  # accelerate's logging needs its state
    available = {str(kind) for kind in filter_trackers(list(report_to), logging_dir=".")}
    missing = [name for name in report_to if name not in available]
    if missing:
        raise UserError(f"--report_to {' '.join(missing)}: not installed (pip install {' '.join(missing)})")


def report_results(summary: dict, report_to: list[str], project: str, run_name: str, logging_dir: str) -> None:
    """Log ``summary`` (what ``evaluate`` returned) to each tracker of ``report_to`` (see :func:`check_trackers`);
    ``logging_dir`` is where the trackers that write files (tensorboard) put them."""
    from accelerate import Accelerator

    from ..files import json_safe

    check_trackers(report_to)
    os.makedirs(logging_dir, exist_ok=True)
    accelerator = Accelerator(log_with=report_to, project_dir=logging_dir)
    config = {key: str(value) if isinstance(value, (list, dict)) else value
              for key, value in json_safe(summary["settings"]).items()}  # fmt: skip
    accelerator.init_trackers(project, config=config,
                              init_kwargs={"wandb": {"name": run_name}, "trackio": {"name": run_name}})  # fmt: skip
    accelerator.log(flat_metrics(summary), step=0)
    accelerator.end_training()
