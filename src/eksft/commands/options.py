"""One command-line style for every ``eksft`` command.

``eksft sft`` and ``eksft grpo`` parse with TRL's ``TrlParser`` (``--config recipe.yaml``, ``--flag_name``). The other
commands keep argparse (their options are not dataclass fields of a library config), with the same conventions:

* ``--config FILE``: a YAML mapping of option names to values; flags on the command line override it;
* every option spelled ``--flag-name`` is also accepted as ``--flag_name``, and a config key either way;
* a value for a repeatable option (``--benchmark``) may be a YAML list; a flag (``--overwrite``) takes true / false;
  an option given on the command line replaces the file's value (all of it, for a repeatable option).

An unknown key or a wrong value in the file is a ``UserError`` naming the file and the key.
"""

from __future__ import annotations

import argparse
import os


def with_underscore_aliases(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every ``--flag-name`` option of ``parser`` the alias ``--flag_name`` (hidden from ``--help``)."""
    for action in list(parser._actions):
        for option in list(action.option_strings):
            if option.startswith("--") and "-" in option[2:]:
                alias = "--" + option[2:].replace("-", "_")
                if alias not in parser._option_string_actions:
                    action.option_strings.append(alias)
                    parser._option_string_actions[alias] = action
    return parser


def _config_argv(parser: argparse.ArgumentParser, path: str, given: list[str]) -> list[str]:
    """The options of the YAML file ``path`` as command-line arguments, except those ``given`` on the command line."""
    import yaml

    from ..errors import UserError

    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}; give the path of a YAML file of options")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the config file {path}: {err}; fix the YAML there") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config file is a mapping of option names to values, got a {type(values).__name__}")
    actions = {option[2:].replace("-", "_"): action for action in parser._actions for option in action.option_strings
               if option.startswith("--")}  # fmt: skip
    argv: list[str] = []
    for key, value in values.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None or str(key) in ("config", "help"):
            known = ", ".join(sorted(k for k in actions if k not in ("config", "help")))
            raise UserError(f"{path}: unknown option {key!r}; the options are: {known}")
        flag = action.option_strings[0]
        if any(arg == option or arg.startswith(option + "=") for option in action.option_strings for arg in given):
            continue  # given on the command line: that wins (for a repeatable option too)
        if action.nargs == 0:  # a flag: true applies it
            if not isinstance(value, bool):
                raise UserError(f"{path}: {key} is a flag: give true or false, got {value!r}")
            if value:
                argv.append(flag)
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(action, argparse._AppendAction):
            for item in items:
                argv += [flag, str(item)]
        elif action.nargs in ("+", "*"):
            argv += [flag, *(str(item) for item in items)]
        else:
            if isinstance(value, (list, dict)):
                raise UserError(f"{path}: {key} takes one value, got {value!r}")
            argv += [flag, str(value)]
    return argv


def parse_options(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE`` and ``--flag_name`` aliases (see the module docstring)."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of options (keys as the flags, without --); flags given here override it")  # fmt: skip
    with_underscore_aliases(parser)
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            rest = [*argv[:i], *argv[i + 2 :]]
            return parser.parse_args([*_config_argv(parser, argv[i + 1], rest), *rest])
        if arg.startswith("--config="):
            rest = [*argv[:i], *argv[i + 1 :]]
            return parser.parse_args([*_config_argv(parser, arg.split("=", 1)[1], rest), *rest])
    return parser.parse_args(argv)
