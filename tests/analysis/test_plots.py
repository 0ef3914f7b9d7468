"""Every plot function writes a non-empty PNG from data and returns its path; pass@k curves are exact."""

import numpy as np
import pytest

from eksft.analysis import plots
from eksft.analysis.drift import parameter_drift
from eksft.analysis.shift import TokenValues
from eksft.analysis.token_sets import read_token_stats

from .conftest import write_token_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, returned):
    assert returned == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_training_curves(tmp_path):
    eksft = read_token_stats(write_token_stats(tmp_path / "eksft", steps=12))
    nll = [{"loss": 2.0 - 0.05 * s, "ce": 2.0 - 0.05 * s, "mean_entropy": 2.5, "step": s} for s in range(1, 13)]
    path = tmp_path / "curves.png"
    assert_png(path, plots.plot_training_curves({"eksft": eksft, "nll": nll}, path))
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_training_curves({"x": [{"step": 1}]}, tmp_path / "none.png")


def test_pass_at_k_curve_and_plot(tmp_path):
    curve = plots.pass_at_k_curve({0: [True, False], 1: [False, False], 2: [True, True, False]})
    # k runs to the smallest sample count (2); the third problem uses all three of its samples
    assert curve == [(1, pytest.approx((0.5 + 0 + 2 / 3) / 3)), (2, pytest.approx((1 + 0 + 1) / 3))]
    curves = {
        "base": [(k, 1 - 0.8**k) for k in range(1, 17)],
        "sft nll": [(k, 1 - 0.7**k * 1.1 if k > 1 else 0.23) for k in range(1, 17)],
    }
    path = tmp_path / "pass_at_k.png"
    assert_png(path, plots.plot_pass_at_k(curves, path, title="pass@k on the demo world"))


def test_drift_per_layer(tmp_path, base_dir, perturbed_dir):
    report = parameter_drift(perturbed_dir[0], base_dir)
    drifts = {"perturbed": report, "as dict": report.to_dict(),
              "plain": {"layer 0": 0.01, "layer 1": 0.02, "lm_head": 0.03}}  # fmt: skip
    path = tmp_path / "drift.png"
    assert_png(path, plots.plot_drift_per_layer(drifts, path))


def test_token_histograms(tmp_path):
    rng = np.random.default_rng(0)
    base_entropy = rng.gamma(2.0, 0.8, 4000)
    values = {
        "sft nll": TokenValues(kl=rng.exponential(0.3, 4000), entropy=base_entropy * 0.6, base_entropy=base_entropy),
        "sft eksft": TokenValues(kl=rng.exponential(0.05, 4000), entropy=base_entropy * 0.95,
                                 base_entropy=base_entropy),
    }
    path = tmp_path / "sub" / "hist.png"
    assert_png(path, plots.plot_token_histograms(values, path))
