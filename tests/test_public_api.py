"""The names users import from ``eksft`` itself, loaded lazily."""

import subprocess
import sys

import eksft


def test_public_names_are_the_library_objects():
    from eksft.chunked import chunked_token_stats
    from eksft.objectives import OBJECTIVES, ObjectiveParams, compute_objective, eksft_loss, objective_loss
    from eksft.stats import TokenStats, token_stats
    from eksft.trainer import EKSFTConfig, EKSFTTrainer

    expected = dict(EKSFTConfig=EKSFTConfig, EKSFTTrainer=EKSFTTrainer, OBJECTIVES=OBJECTIVES,
                    ObjectiveParams=ObjectiveParams, compute_objective=compute_objective, eksft_loss=eksft_loss,
                    objective_loss=objective_loss, TokenStats=TokenStats, token_stats=token_stats,
                    chunked_token_stats=chunked_token_stats)  # fmt: skip
    assert sorted(expected) == sorted(n for n in eksft.__all__ if n != "__version__")
    for name, value in expected.items():
        assert getattr(eksft, name) is value, name
    assert set(eksft.__all__) <= set(dir(eksft))


def test_import_eksft_loads_neither_torch_nor_trl():
    code = "import sys, eksft; print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "from eksft import EKSFTConfig, EKSFTTrainer, eksft_loss; print(EKSFTTrainer.__name__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "EKSFTTrainer\n"


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        eksft.nope  # noqa: B018
