"""Parsing a YAML recipe and/or flags with ``trl.TrlParser``, with configuration problems as ``UserError``."""

from __future__ import annotations

import os

from ..errors import UserError


def parse_recipe(dataclass_types: tuple, argv: list[str], prog: str) -> tuple:
    """One instance per dataclass, from ``--config recipe.yaml`` (optional) and flags, which override it.

    argparse still exits (``SystemExit``) on ``--help`` and on unknown flags, after printing the usage.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(dataclass_types, prog=prog)
    if "--config" in argv:
        index = argv.index("--config") + 1
        if index >= len(argv) or not os.path.isfile(argv[index]):
            raise UserError(f"config file not found: {argv[index] if index < len(argv) else '(missing after --config)'}")
    try:
        return tuple(parser.parse_args_and_config(argv))
    except yaml.YAMLError as err:
        raise UserError(f"cannot read the config file: {err}") from None
    except (ValueError, TypeError) as err:  # the config dataclasses validate their values, naming the field
        raise UserError(f"invalid configuration: {err}") from None
