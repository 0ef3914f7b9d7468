"""The tiny base model: pre-trained here on the world's corpus, cached by its config (built under a temporary name and
renamed into place)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from eksft.cache import cache_root
from eksft.errors import UserError
from eksft.files import fresh_sibling

from .profiles import BASE_MODEL_FILE, CORPUS_VERSION, BaseModelConfig
from .progress import Progress
from .world_data import pretraining_documents


def base_model_dir(config: BaseModelConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / f"demo-base-{config.key()}"


def _is_built(path: Path, config: BaseModelConfig) -> bool:
    try:
        recorded = json.loads((path / BASE_MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("config") == asdict(config) and (path / "config.json").is_file()


def ensure_base_model(config: BaseModelConfig, cache_dir: str | os.PathLike | None = None,
                      progress: Progress | None = None, threads: int | None = None) -> tuple[Path, bool]:  # fmt: skip
    """The cached base model for ``config``: ``(path, built now)``. Built (atomically) only when absent.

    The directory is named after ``config.key()``, so a changed recipe gets a new model and never a stale one.
    """
    from eksft.tiny_model import METADATA_FILE, PretrainConfig, build_tiny_model

    path = base_model_dir(config, cache_dir)
    if _is_built(path, config):
        return path, False
    if path.exists():  # a directory under our name that is not a finished build (an old layout): replace it
        shutil.rmtree(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the cache directory {path.parent}: {err}; use --cache-dir") from None
    documents = pretraining_documents(config)

    def on_step(step: int, loss: float) -> None:
        if progress is not None:
            progress.update(step, f"(loss {loss:.3f})")

    start = time.monotonic()
    # built under a temporary name and renamed: the cache never holds a half-trained model under the real name
    staging = fresh_sibling(path, "build")
    try:
        result = build_tiny_model(
            staging / "model", pretrain_steps=config.pretrain_steps, seed=config.seed,
            hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads, head_dim=config.hidden_size // config.num_heads,
            intermediate_size=config.intermediate_size,
            pretrain_config=PretrainConfig(batch_size=config.batch_size, seq_len=config.seq_len, lr=config.lr,
                                           warmup_steps=config.warmup_steps, num_threads=threads),
            progress=False, documents=documents, on_step=on_step,
        )  # fmt: skip
        meta = json.loads((result.path / METADATA_FILE).read_text(encoding="utf-8"))
        record = {"config": asdict(config), "key": config.key(), "corpus_version": CORPUS_VERSION,
                  "documents": len(documents), "num_parameters": result.num_parameters,
                  "final_loss": meta.get("final_loss"), "seconds": round(time.monotonic() - start, 1)}  # fmt: skip
        (result.path / BASE_MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(result.path, path)
        except OSError:
            if not _is_built(path, config):  # not another run that finished the same model first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, True


def base_model_info(path: Path) -> dict:
    return json.loads((path / BASE_MODEL_FILE).read_text(encoding="utf-8"))
