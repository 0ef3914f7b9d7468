"""Evaluation metrics (pass@k, avg@n); grading itself lives in ``eksft.grading``."""

from eksft.evaluation.metrics import avg_at_n, pass_at_k, pass_at_k_table

__all__ = ["avg_at_n", "pass_at_k", "pass_at_k_table"]
