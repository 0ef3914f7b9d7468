"""Analysis of fine-tuned models against their base: what ``eksft analyze`` computes and the demo report reuses.

* ``drift``      - relative L2 parameter drift ||θ - θ0|| / ||θ0||, total and per layer, read from the weight files;
* ``shift``      - distribution shift on held-out text: mean KL(model || base) per token and both entropies;
* ``token_sets`` - the trainer's ``token_stats.jsonl``: per-step metrics, entropy/KL set fractions and IoU;
* ``plots``      - PNGs: training curves, pass@k curves, drift per layer, entropy/KL histograms;
* ``table``      - Markdown tables, with "mean ± std" cells over seeds.

The names below are imported lazily, so that ``import eksft.analysis`` loads neither torch nor matplotlib.
"""

from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "DriftReport": "drift",
    "parameter_drift": "drift",
    "ShiftReport": "shift",
    "TokenValues": "shift",
    "distribution_shift": "shift",
    "token_values": "shift",
    "load_model": "shift",
    "read_token_stats": "token_sets",
    "metric_series": "token_sets",
    "set_summary": "token_sets",
    "pass_at_k_curve": "plots",
    "plot_training_curves": "plots",
    "plot_pass_at_k": "plots",
    "plot_drift_per_layer": "plots",
    "plot_token_histograms": "plots",
    "markdown_table": "table",
    "merge_seeds": "table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
