"""Shared fixtures: one tiny offline model for the whole session, small datasets, a training config factory."""

import pytest


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> str:
    return tiny_model_dir


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
