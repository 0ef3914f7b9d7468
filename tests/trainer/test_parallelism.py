"""Unsupported ways of splitting the work stop before anything is loaded, with a message naming the setting and what
to do instead (``eksft.trainer.parallelism``); supported ones are tested in ``test_sharded_training.py``."""

import json
from pathlib import Path

import pytest
from accelerate.parallelism_config import ParallelismConfig

from eksft.cli import main
from eksft.trainer import EKSFTConfig, EKSFTTrainer

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
MISSING_MODEL = "/nonexistent/model"  # reaching the model loader would raise OSError instead of the refusal


@pytest.fixture
def launcher_env(monkeypatch):
    """What ``accelerate launch`` with a ``parallelism_config`` section exports."""

    def set_sizes(**sizes):
        monkeypatch.setenv("ACCELERATE_USE_PARALLELISM_CONFIG", "true")
        for name, value in sizes.items():
            monkeypatch.setenv(f"PARALLELISM_CONFIG_{name.upper()}", str(value))

    return set_sizes


@pytest.fixture
def several_gpus(monkeypatch):
    """One process that sees two GPUs and no launcher: the Trainer would wrap the model in nn.DataParallel."""
    monkeypatch.setattr(EKSFTConfig, "n_gpu", property(lambda self: 2))


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"cp_size": 2}, "context parallelism (parallelism_config cp_size=2)"),
        ({"sp_size": 4}, "sequence parallelism (parallelism_config sp_size=4)"),
        ({"tp_size": 2}, "tensor parallelism (parallelism_config tp_size=2)"),
    ],
)
def test_sequence_and_vocabulary_splits_are_refused_before_loading(launcher_env, make_config, sizes, message):
    launcher_env(**sizes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EKSFTTrainer(MISSING_MODEL, args=make_config())


def test_a_parallelism_config_in_the_arguments_is_checked_too(make_config, monkeypatch):
    config = make_config()
    monkeypatch.setattr(config, "parallelism_config", ParallelismConfig(cp_size=2))
    with pytest.raises(ValueError, match="cp_size=2"):
        EKSFTTrainer(MISSING_MODEL, args=config)


def test_data_parallel_in_one_process_is_refused_with_the_launch_commands(several_gpus, make_config):
    with pytest.raises(ValueError, match="nn.DataParallel") as error:
        EKSFTTrainer(MISSING_MODEL, args=make_config())
    assert "accelerate launch --num_processes 2" in str(error.value)
    assert "torchrun --nproc_per_node 2" in str(error.value)


@pytest.mark.parametrize("setup", ["context", "data_parallel"])
def test_the_cli_exits_2_before_reading_anything(setup, launcher_env, request, tmp_path, capsys):
    if setup == "context":
        launcher_env(cp_size=2)
    else:
        request.getfixturevalue("several_gpus")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"}]}]))
    out = tmp_path / "out"
    code = main(["sft", "--config", RECIPE, "--model_name_or_path", MISSING_MODEL, "--dataset_name", str(data),
                 "--output_dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ("cp_size=2" if setup == "context" else "torchrun --nproc_per_node 2") in err
    assert not out.exists()
