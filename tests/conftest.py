"""Fixtures for the whole suite: offline, one thread, one tiny model built once per session."""

import os

import pytest
import torch

# Nothing here may touch the network: models are built locally and the data are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # tiny models gain nothing from a second thread, and on 2 shared cores it makes them slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny Qwen3 model + tokenizer (ChatML template with generation markers)."""
    from eksft.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_model(path, progress=False)
    return str(path)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct (float32 from its GGUF file), as `eksft smollm2 DIR` writes it for a user.

    Built once into the eksft cache (about 30 s), then copied. Installed by `make install`: never skipped.
    """
    from eksft.smollm2 import write_smollm2

    path, _ = write_smollm2(tmp_path_factory.mktemp("models") / "smollm2")
    return str(path)
