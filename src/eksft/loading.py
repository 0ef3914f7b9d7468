"""Loading a model directory's tokenizer with a clear error when the directory is not a model.

transformers 5 silently returns an empty one-token tokenizer for a directory without tokenizer files, so the
files are checked first.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer(model: str, flag: str = "--model", **kwargs):
    """The model's tokenizer, after checking that ``model`` is a model (a config and a tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {model} is a file; give the model directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{flag} {model} is not a model directory: it has no config.json")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{flag} {model}: cannot load its tokenizer: none of {', '.join(TOKENIZER_FILES)} is there "
                        "(save the tokenizer next to the model)")  # fmt: skip
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise UserError(f"{flag} {model}: no such directory")
    try:
        AutoConfig.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {model}: cannot read the model config: {err}") from None
    try:
        return AutoTokenizer.from_pretrained(model, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{flag} {model}: cannot load its tokenizer: {err}") from None
