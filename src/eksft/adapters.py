"""LoRA (PEFT) adapter folders: what ``eksft sft --use_peft true`` writes, and how the other commands take one.

An adapter folder holds ``adapter_config.json``, the adapter weights and the tokenizer, but no ``config.json``: the
base model is named by ``base_model_name_or_path`` in the adapter config. ``eksft eval`` (hf backend) loads the base,
applies the adapter and merges it in memory; ``eksft merge`` writes the merged model as a full model directory, which
is what ``eksft analyze`` and vLLM take (they stop with the merge command when given an adapter). ``eksft grpo`` on an
adapter folder goes on training that adapter.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from .errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A directory with a PEFT adapter and no full model (``adapter_config.json``, no ``config.json``)."""
    path = Path(path).expanduser()
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def check_adapter_dir(path: str | os.PathLike) -> None:
    """A ``UserError`` unless ``path`` is an adapter folder, saying what it is instead."""
    path = Path(path).expanduser()
    if not is_adapter_dir(path):
        what = "a full model already (it has config.json)" if (path / "config.json").is_file() else \
            f"not an adapter folder (no {ADAPTER_CONFIG})"  # fmt: skip
        raise UserError(f"{path} is {what}: nothing to merge")


def merged_path(adapter_dir: str | os.PathLike) -> str:
    return str(adapter_dir).rstrip("/") + "-merged"


def merge_command(adapter_dir: str | os.PathLike) -> str:
    return f"eksft merge {shlex.quote(str(adapter_dir))} {shlex.quote(merged_path(adapter_dir))}"


def adapter_refusal(adapter_dir: str | os.PathLike, flag: str, why: str) -> UserError:
    """The error for an adapter folder where a full model is needed, with the command that makes one."""
    return UserError(
        f"{flag} {adapter_dir} is a LoRA adapter folder ({ADAPTER_CONFIG}, no config.json), and {why}. Merge the "
        f"adapter into its base first: {merge_command(adapter_dir)}, then give {flag} {merged_path(adapter_dir)}"
    )


def adapter_base(adapter_dir: str | os.PathLike, base: str | None = None) -> str:
    """The base model of an adapter: ``base`` when given, else ``base_model_name_or_path`` of its adapter config.

    A relative local path is taken from the current directory (where the training ran, usually), else from the
    adapter folder; a base that is neither a directory nor a hub id (owner/name) is an error naming ``--base_model``.
    """
    adapter_dir = Path(adapter_dir).expanduser()
    if base is None:
        config_file = adapter_dir / ADAPTER_CONFIG
        try:
            base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError) as err:
            raise UserError(f"{config_file}: cannot read the adapter config ({err})") from None
        if not base:
            raise UserError(f"{config_file} names no base model (base_model_name_or_path); give it with --base_model")
        for candidate in (Path(base).expanduser(), adapter_dir / base):
            if candidate.is_dir():
                return str(candidate.absolute())
    elif Path(base).expanduser().is_dir():
        return str(Path(base).expanduser().absolute())
    if Path(base).is_absolute() or base.startswith((".", "~")) or base.count("/") != 1:
        raise UserError(f"the base model of the adapter {adapter_dir}, {base!r}, is not a directory here (nor a hub "
                        "id); give its location with --base_model DIR")  # fmt: skip
    return base  # a hub id


def adapter_rank(adapter_dir: str | os.PathLike) -> int:
    """The LoRA rank ``r`` of the adapter config (the largest in ``rank_pattern`` when that gives some modules more)."""
    config_file = Path(adapter_dir).expanduser() / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return max([int(config.get("r") or 8), *map(int, (config.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise UserError(f"{config_file}: cannot read the adapter's rank ({err})") from None


def load_adapter_model(adapter_dir: str | os.PathLike, base: str | None = None, dtype="auto",
                       trust_remote_code: bool = False, trainable: bool = False):  # fmt: skip
    """The base model with the adapter applied (a ``peft.PeftModel``); ``trainable``: the adapter's weights train."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(adapter_dir, base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)  # fmt: skip
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot apply the adapter {adapter_dir} to its base {base_path}: {err}") from None


def load_merged_model(adapter_dir: str | os.PathLike, base: str | None = None, dtype="auto",
                      trust_remote_code: bool = False):  # fmt: skip
    """The base model with the adapter merged into its weights (``merge_and_unload``): a plain transformers model."""
    return load_adapter_model(adapter_dir, base, dtype, trust_remote_code).merge_and_unload()


def merge_adapter(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, base: str | None = None,
                  overwrite: bool = False, trust_remote_code: bool = False) -> Path:  # fmt: skip
    """Write the merged model of ``adapter_dir`` to ``output_dir``: safetensors weights in the base's dtype, the
    adapter's tokenizer (the base's when it has none) and its model card. Built in a hidden sibling and renamed into
    place, so ``output_dir`` appears complete or not at all."""
    from transformers import AutoTokenizer

    from .files import check_writable, fresh_sibling, replace_directory
    from .loading import TOKENIZER_FILES

    adapter_dir, output_dir = Path(adapter_dir).expanduser(), Path(output_dir).expanduser().absolute()
    check_adapter_dir(adapter_dir)
    check_writable(output_dir, "OUTPUT_DIR")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"{output_dir} exists and is not empty; choose another OUTPUT_DIR or pass --overwrite")
    model = load_merged_model(adapter_dir, base, trust_remote_code=trust_remote_code)
    has_tokenizer = any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir) if has_tokenizer else adapter_base(adapter_dir, base))
    staging = fresh_sibling(output_dir, "merging")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if (adapter_dir / MODEL_CARD).is_file():
            shutil.copyfile(adapter_dir / MODEL_CARD, staging / MODEL_CARD)
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
