"""Shared fixtures: one tiny offline model for the whole session, small datasets, a training config factory."""

import os

import pytest
import torch

# Nothing here may touch the network: the tiny model is built locally and the data are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # These models are tiny: one thread is as fast as two and does not fight other test processes for the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a randomly initialised tiny Qwen3 model + tokenizer (ChatML template with generation markers)."""
    from eksft.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_model(path, progress=False)
    return str(path)


def make_conversation(i: int) -> list[dict]:
    """A short math exchange whose lengths vary with i (so that batches need padding)."""
    a, b = i + 2, 3 * i + 1
    return [
        {"role": "user", "content": f"What is {a} + {b}?" + " Explain." * (i % 3)},
        {"role": "assistant", "content": f"{a} + {b} = {a + b}." + " So the answer is " * (i % 2) + f"{a + b}"},
    ]


@pytest.fixture
def conversation():
    return make_conversation


@pytest.fixture
def messages_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"messages": make_conversation(i)} for i in range(8)])


# A few fast, deterministic CPU steps (SFTConfig / EKSFTConfig values)
FAST_CPU = dict(
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    logging_steps=1,
    max_steps=2,
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    max_length=128,
    seed=0,
)


@pytest.fixture
def fast_cpu() -> dict:
    return dict(FAST_CPU)


@pytest.fixture
def make_config(tmp_path):
    """EKSFTConfig with FAST_CPU values, writing under tmp_path; keyword arguments override."""
    from eksft.trainer import EKSFTConfig

    def make(**overrides):
        return EKSFTConfig(**{"output_dir": str(tmp_path / "out"), **FAST_CPU, **overrides})

    return make
