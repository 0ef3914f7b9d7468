"""Loading a model directory's tokenizer with a clear error when the directory is not a model.

transformers 5 silently returns an empty one-token tokenizer for a directory without tokenizer files, so the
files are checked first.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
from pathlib import Path

from .errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer(model: str, flag: str = "--model", *, trust_flag: str = "--trust_remote_code true",
                   adapters: bool = False, **kwargs):  # fmt: skip
    """The model's tokenizer, after checking that ``model`` is a model (a config and a tokenizer).

    ``trust_flag`` is how the calling command spells "run the model's own code", for the message refusing it. A LoRA
    adapter folder (``eksft.adapters``) is taken when ``adapters`` is true (its config is its base model's), and
    refused with the merge command otherwise.
    """
    from transformers import AutoConfig, AutoTokenizer

    from .adapters import adapter_base, adapter_refusal, is_adapter_dir

    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {model} is a file; give the model directory")
    config_source = model
    if path.is_dir() and is_adapter_dir(path):
        if not adapters:
            raise adapter_refusal(model, flag, "this command needs a full model")
        config_source = adapter_base(path)
    elif path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{flag} {model} is not a model directory: it has no config.json")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{flag} {model}: cannot load its tokenizer: none of {', '.join(TOKENIZER_FILES)} is there "
                        "(save the tokenizer next to the model)")  # fmt: skip
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise UserError(f"{flag} {model}: no such directory; give a model directory or a hub id (owner/name)")
    if Path(config_source).is_dir() and not kwargs.get("trust_remote_code"):  # an adapter's: its base's code
        _refuse_custom_code(Path(config_source), flag, trust_flag)
    try:
        AutoConfig.from_pretrained(config_source, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {model}: cannot read the model config: {err}") from None
    try:
        return AutoTokenizer.from_pretrained(model, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{flag} {model}: cannot load its tokenizer: {err}") from None


def _refuse_custom_code(path: Path, flag: str, trust_flag: str) -> None:
    """A model that needs Python files of its own directory is refused unless the user trusts that code.

    Only when transformers does not know the ``model_type``: a config of a native architecture may carry an
    ``auto_map`` too (Phi-3 fine-tunes do), and transformers then loads its own class without running anything.
    transformers refuses the others too, but only after a long message about hub repositories; this one names the
    files.
    """
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        auto_map, model_type = config.get("auto_map"), config.get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{flag} {path}: config.json is not a JSON object ({err})") from None
    if auto_map and model_type not in CONFIG_MAPPING:
        modules = sorted({str(ref).split("--")[-1].split(".")[0] + ".py" for ref in _references(auto_map)})
        raise UserError(
            f"{flag} {path} runs its own code ({', '.join(modules)}, from auto_map in config.json; model_type "
            f"{model_type!r} is not one transformers knows); eksft does not execute code from model directories "
            f"unless asked: read that code, then pass {trust_flag}"
        )


def _references(auto_map) -> list[str]:
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    return [ref for value in values for ref in (value if isinstance(value, list | tuple) else [value]) if ref]


# ---- weights: safetensors only (unpickling a pytorch_model.bin can run arbitrary code) ----------------------------

CONVERT = (
    'python -c "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; src, dst = sys.argv[1:]; '
    "AutoModelForCausalLM.from_pretrained(src, use_safetensors=False).save_pretrained(dst); "
    'AutoTokenizer.from_pretrained(src).save_pretrained(dst)" {src} {dst}'
)


def pickle_refusal(where: str, files: list[str], directory: str | os.PathLike) -> UserError:
    """The error for pickle weights, with the one-line conversion of ``directory`` to a new safetensors directory."""
    src = str(directory).rstrip("/")
    command = CONVERT.format(src=shlex.quote(src), dst=shlex.quote(f"{src}-safetensors"))
    return UserError(
        f"{where}: the weights are PyTorch pickle files ({', '.join(files)}); eksft reads weights from safetensors "
        f"files only, since unpickling can run any code. If you trust them, convert them once and use the new "
        f"directory: {command}"
    )


def check_safetensors_weights(path: str, option: str) -> None:
    """A ``UserError`` naming ``option`` when the directory ``path`` has pickle weights and no safetensors."""
    if not os.path.isdir(path) or glob.glob(os.path.join(path, "*.safetensors")):
        return
    pickles = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if pickles:
        raise pickle_refusal(f"{option} {path}", pickles, path)
