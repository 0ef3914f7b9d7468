"""One command-line style for every ``eksft`` command: options are dataclass fields, parsed by ``trl.TrlParser``.

As in TRL's own scripts:

* ``--config FILE``: a YAML mapping of option names to values; flags on the command line override it;
* every option is accepted as ``--flag_name`` and as ``--flag-name``, and a config key either way;
* a boolean option is ``--flag`` (true), ``--flag false``, or ``--no_flag`` when it defaults to true.

Two additions: a repeatable option (``--benchmark a --benchmark b``, declared with ``repeatable``) collects every
value, and on the command line replaces the file's list rather than extending it; every mistake in the file (an
unknown key, a non-boolean value for a flag, bad YAML, a missing file) is a ``UserError`` naming the file and the key.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import os
import re
from typing import Any

from ..errors import UserError


class _Repeatable(argparse.Action):
    """Collects the values of every use of the option; the first use replaces the default (a config file's list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, kept + list(values))


def repeatable(help: str, metavar: str | None = None) -> Any:
    """A ``list[str]`` dataclass field for an option given once per value (``--model a --model b``)."""
    metadata = {"help": help, "action": _Repeatable}
    if metavar:
        metadata["metavar"] = metavar
    return dataclasses.field(default_factory=list, metadata=metadata)


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field with its help text (and argparse extras such as ``metavar`` or ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


def _parser_class():
    from trl import TrlParser

    class OptionParser(TrlParser):
        """``TrlParser`` whose config file is checked key by key (see the module docstring)."""

        config_path = "the config file"

        def set_defaults_with_config(self, **values):
            actions: dict[str, argparse.Action] = {}
            for action in self._actions:  # the first action of a dest is the option itself, not its --no_ twin
                actions.setdefault(action.dest, action)
            checked = {}
            for key, value in values.items():
                name = str(key).replace("-", "_")
                action = actions.get(name)
                if action is None or name == "help":
                    close = difflib.get_close_matches(name, [dest for dest in actions if dest != "help"], n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise UserError(f"{self.config_path}: unknown option {key!r}{hint}; `{self.prog} --help` lists "
                                    "the options")  # fmt: skip
                # a boolean field: its type is HfArgumentParser's string_to_bool (TRL ships its own copy)
                if getattr(action.type, "__name__", "") == "string_to_bool" and not isinstance(value, bool):
                    raise UserError(f"{self.config_path}: {key} is a flag: give true or false, got {value!r}")
                if action.nargs in ("+", "*") and not isinstance(value, list):
                    value = [value]
                checked[name] = value
            return super().set_defaults_with_config(**checked)

    return OptionParser


def _config_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with ``--config=FILE`` spelled ``--config FILE``, and the path of that file (checked to exist)."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" not in argv:
        return argv, None
    index = argv.index("--config") + 1
    path = argv[index] if index < len(argv) else None
    if path is None or not os.path.isfile(path):
        raise UserError(f"config file not found: {path or '(missing after --config)'}; give the path of a YAML file "
                        "of options (keys as the flags, without --)")  # fmt: skip
    return argv, path


def parse_options(dataclass_types: tuple, argv: list[str], prog: str, description: str | None = None,
                  positionals: tuple[tuple[str, str], ...] = ()) -> tuple:  # fmt: skip
    """One instance per dataclass, from ``--config FILE`` (optional) and flags, which override it.

    ``positionals=((name, help), ...)`` adds positional arguments, returned last as one ``argparse.Namespace``.
    A configuration problem is a ``UserError``; argparse still exits (``SystemExit``) on ``--help`` and on a bad
    command line, after printing the usage.
    """
    argv, path = _config_argv(list(argv))
    if path:
        _check_config_file(path)
    parser = _parser_class()(dataclass_types, prog=prog, description=description)
    parser.config_path = path
    for name, help in positionals:
        parser.add_argument(name, metavar=name.upper(), help=help)
    try:
        return tuple(parser.parse_args_and_config(argv))
    except (ValueError, TypeError) as err:  # the dataclasses validate their values, naming the field
        raise UserError(_unknown_options(str(err), prog) or f"invalid configuration: {err} (change that option on "
                        "the command line or in the --config file)") from None  # fmt: skip


def _check_config_file(path: str) -> None:
    """A readable YAML mapping (TrlParser reads it again, to set the defaults)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the config file {path}: {err}; fix the YAML there") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a config file is a mapping of option names to values, got a {type(loaded).__name__}")


def _unknown_options(message: str, prog: str) -> str | None:
    """HfArgumentParser's "arguments are not used" message, in the words of a command line."""
    match = re.search(r"not used by the HfArgumentParser: (\[.*\])", message)
    if match is None:
        return None
    options = [arg for arg in ast.literal_eval(match.group(1)) if str(arg).startswith("--")]
    return f"unknown option{'s' * (len(options) > 1)} {', '.join(options)} on the command line; `{prog} --help` lists " \
           "the options"  # fmt: skip
