"""Training data: read a local file or a hub dataset, convert its layout to TRL's conversational format, report.

Layouts (``detect_layout`` picks one from the columns, or name it), and what a row becomes:

* ``messages`` (OpenAI): ``{"messages": [{"role", "content"}, ...]}`` -> ``messages``; every assistant turn is trained.
* ``sharegpt``: ``{"conversations": [{"from" | "role", "value"}, ...]}`` with tags human/user, gpt/assistant,
  system, and an optional ``"system"`` column -> ``messages``. The published EKSFT data uses ``role``/``value``.
* ``prompt_completion``: ``{"prompt", "completion"}``, strings or message lists -> conversational ``prompt`` /
  ``completion``; only the completion is trained.
* ``alpaca``: ``{"instruction", "input" (optional), "output"}`` -> ``messages``: the user turn is the instruction
  (then a blank line and the input), the assistant turn the output.
* ``openr1`` (OpenR1 / LUFFY, e.g. ``Elliott/Openr1-Math-46k-8192``): ``{"prompt": [messages], "target":
  [messages]}`` -> ``prompt`` / ``completion``. That dataset's ``prompt`` holds a system and a user turn.

Strings become chat turns, so every layout is rendered by the tokenizer's chat template. ``system_prompt`` is
added as a first system turn to conversations that have none.

A malformed row (missing field, unknown role, content that is not a string) is an error naming the row and the
field (``bad_rows="error"``, the default), or is dropped and counted (``bad_rows="drop"``). Rows whose response is
empty are always dropped and counted; so are rows whose prompt alone fills ``max_length`` (nothing of the response
would be left to train on). Rows longer than ``max_length`` are kept, truncated by TRL, and counted.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import parse_jsonl

LAYOUTS = ("messages", "sharegpt", "prompt_completion", "alpaca", "openr1")
BAD_ROWS = ("error", "drop")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker tags -> chat roles
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
LOCAL_FORMATS = (".json", ".jsonl", ".parquet")
OTHER_FILE_TYPES = (".csv", ".tsv", ".txt", ".arrow")  # local files, not supported: named in the error
EXAMPLES_PER_REASON = 3  # row numbers shown per drop reason


class BadRow(ValueError):
    """A row that does not fit its layout; the message names the field."""


@dataclass
class DataReport:
    source: str
    layout: str
    rows_read: int = 0
    rows_in_source: int | None = None  # before max_rows
    kept: int = 0
    truncated: int = 0
    max_length: int | None = None
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)  # reason -> first row numbers
    notes: list[str] = field(default_factory=list)  # what was done to the rows, one line each
    split_conversations: bool = False  # conversations became prompt-completion rows (``responses_only``)

    def drop(self, reason: str, row: int) -> None:
        self.dropped[reason] += 1
        examples = self.dropped_rows.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(row)

    def __str__(self) -> str:
        truncated = f", {self.truncated} of them truncated to max_length={self.max_length}" if self.truncated else ""
        of_source = (
            f" (of {self.rows_in_source} in the source)" if self.rows_in_source not in (None, self.rows_read) else ""
        )
        lines = [
            f"data: {self.source} (layout {self.layout}): {self.rows_read} rows read{of_source}, {self.kept} kept{truncated}, "
            f"{sum(self.dropped.values())} dropped"
        ]
        lines += [f"  {note}" for note in self.notes]
        for reason, count in self.dropped.most_common():
            rows = ", ".join(map(str, self.dropped_rows[reason]))
            lines.append(
                f"  dropped {count}: {reason} (rows {rows}{', ...' if count > len(self.dropped_rows[reason]) else ''})"
            )
        return "\n".join(lines)


# ---- reading ----------------------------------------------------------------------------------------------------


def read_rows(name_or_path: str, *, config: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a local JSON / JSONL / Parquet file, or of a split of a ``datasets`` hub dataset (or directory)."""
    path = Path(name_or_path).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        return _read_with_datasets(str(path), name=config, split=split)
    if suffix in LOCAL_FORMATS + OTHER_FILE_TYPES or path.exists() or name_or_path.startswith((".", "/", "~")):
        if not path.is_file():
            raise UserError(f"dataset file not found: {path}; check the path (a hub dataset is named owner/name)")
        if suffix == ".parquet":
            return _read_with_datasets("parquet", data_files=str(path), split="train")
        if suffix in (".json", ".jsonl"):
            return read_json(path)
        raise UserError(f"unknown dataset file type {path.suffix!r} for {path}; use .json, .jsonl or .parquet")
    return _read_with_datasets(name_or_path, name=config, split=split)


def _read_with_datasets(path: str, **kwargs) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(path, **kwargs).to_list()
    except (FileNotFoundError, ValueError, OSError) as err:  # missing hub dataset, unknown split/config, offline
        raise UserError(
            f"cannot load dataset {path!r} ({', '.join(f'{k}={v}' for k, v in kwargs.items())}): {err}"
        ) from err


def read_json(path: Path) -> list[dict]:
    """A JSON array of objects, or JSON Lines (one object per line); errors name ``file:line``."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{path}: line {line} is not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); "
            "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not text.lstrip().startswith("["):
        return [row for _, row in parse_jsonl(data, path)]
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}; fix the file there") from None
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {index + 1} is a {type(row).__name__}, expected a JSON object")
    return rows


# ---- layouts ------------------------------------------------------------------------------------------------------


def detect_layout(columns) -> str:
    columns = set(columns)
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if {"prompt", "target"} <= columns:
        return "openr1"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    raise UserError(
        f"cannot tell the dataset layout from its columns {sorted(columns)}; expected 'messages' (OpenAI), "
        "'conversations' (ShareGPT), 'prompt' + 'completion', 'instruction' + 'output' (Alpaca) or "
        "'prompt' + 'target' (OpenR1/LUFFY)"
    )


def _field(row: dict, name: str):
    if name not in row or row[name] is None:
        raise BadRow(f"missing field {name!r}")
    return row[name]


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{where} must be a string, got {type(value).__name__}")
    return value


def _turns(value, where: str, *, role_key="role", content_key="content", role_map=None) -> list[dict]:
    """A list of chat turns, checked and normalised to ``{"role", "content"}``."""
    if isinstance(value, str):
        raise BadRow(f"{where} must be a list of messages, got a string")
    if not isinstance(value, list):
        raise BadRow(f"{where} must be a list of messages, got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise BadRow(f"{where}[{i}] must be an object, got {type(turn).__name__}")
        keys = (role_key,) if isinstance(role_key, str) else role_key
        tag = next((turn[k] for k in keys if k in turn), None)
        if tag is None:
            raise BadRow(f"{where}[{i}] has no {' or '.join(repr(k) for k in keys)} field")
        role = role_map.get(tag) if role_map else (tag if tag in ROLES else None)
        if role is None:
            known = ", ".join(role_map or ROLES)
            raise BadRow(f"unknown role {tag!r} in {where}[{i}] (known: {known})")
        if content_key not in turn:
            raise BadRow(f"{where}[{i}] has no {content_key!r} field")
        turns.append({"role": role, "content": _text(turn[content_key], f"{where}[{i}].{content_key}")})
    return turns


def _as_turns(value, where: str, role: str) -> list[dict]:
    """A string becomes one turn of ``role``; a list must already be turns."""
    return [{"role": role, "content": value}] if isinstance(value, str) else _turns(value, where)


def convert_row(row: dict, layout: str) -> dict:
    """One row in TRL's conversational format: ``{"messages"}`` or ``{"prompt", "completion"}``. Raises BadRow."""
    if layout == "messages":
        return {"messages": _turns(_field(row, "messages"), "messages")}
    if layout == "sharegpt":
        turns = _turns(
            _field(row, "conversations"),
            "conversations",
            role_key=("from", "role"),
            content_key="value",
            role_map=SHAREGPT_ROLES,
        )
        if isinstance(row.get("system"), str) and row["system"] and not (turns and turns[0]["role"] == "system"):
            turns = [{"role": "system", "content": row["system"]}, *turns]
        return {"messages": turns}
    if layout == "prompt_completion":
        return {
            "prompt": _as_turns(_field(row, "prompt"), "prompt", "user"),
            "completion": _as_turns(_field(row, "completion"), "completion", "assistant"),
        }
    if layout == "alpaca":
        instruction = _text(_field(row, "instruction"), "instruction")
        extra = _text(row.get("input") or "", "input")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": _text(_field(row, "output"), "output")},
            ]
        }
    if layout == "openr1":
        return {
            "prompt": _turns(_field(row, "prompt"), "prompt"),
            "completion": _turns(_field(row, "target"), "target"),
        }
    raise UserError(f"unknown dataset layout {layout!r}; known layouts: auto, {', '.join(LAYOUTS)}")


def _responses(example: dict) -> list[dict]:
    turns = example["completion"] if "completion" in example else example["messages"]
    return [t for t in turns if t["role"] == "assistant"]


def _with_system(example: dict, system_prompt: str) -> dict:
    key = "prompt" if "prompt" in example else "messages"
    if example[key] and example[key][0]["role"] == "system":
        return example
    return {**example, key: [{"role": "system", "content": system_prompt}, *example[key]]}


def convert_rows(
    rows: list[dict],
    layout: str = "auto",
    *,
    source: str = "data",
    system_prompt: str | None = None,
    bad_rows: str = "error",
    row_numbers: list[int] | None = None,
) -> tuple[list[tuple[int, dict]], DataReport]:
    """Every row converted (see the module docstring), as ``(row number, example)``, and the report so far.

    ``row_numbers`` are the rows' numbers in the source, counted from 1 (default 1, 2, ...: in a JSONL file without
    blank lines, the line numbers), used in messages and the report.
    """
    if bad_rows not in BAD_ROWS:
        raise UserError(f"bad_rows must be one of {', '.join(BAD_ROWS)}; got {bad_rows!r}")
    if not rows:
        raise UserError(f"{source}: the dataset is empty; give a file with at least one row")
    if layout == "auto":
        layout = detect_layout(rows[0])
    elif layout not in LAYOUTS:
        raise UserError(f"unknown dataset layout {layout!r}; known layouts: auto, {', '.join(LAYOUTS)}")
    report = DataReport(source=source, layout=layout, rows_read=len(rows))
    examples = []
    for number, row in zip(row_numbers or range(1, len(rows) + 1), rows, strict=True):
        try:
            example = convert_row(row, layout)
        except BadRow as err:
            if bad_rows == "error":
                raise UserError(
                    f"{source}: row {number}: {err} (layout {layout}; bad_rows='drop' skips such rows)"
                ) from None
            report.drop(str(err), number)
            continue
        responses = _responses(example)
        if not responses:
            report.drop("no assistant response", number)
        elif any(not turn["content"].strip() for turn in responses):
            report.drop("empty response", number)
        else:
            examples.append((number, _with_system(example, system_prompt) if system_prompt else example))
    report.kept = len(examples)
    return examples, report


def responses_only(examples: list[tuple[int, dict]], tokenizer, source: str, report: DataReport):
    """``messages`` rows as prompt-completion rows, one per assistant turn, when the tokenizer's chat template cannot
    mark the assistant tokens (``eksft.templates``); other layouts, and templates that can, are left as they are."""
    from .templates import can_mask_assistant, response_rows

    if not examples or "messages" not in examples[0][1] or can_mask_assistant(tokenizer):
        return examples  # every row has the layout of the first
    rows = [(number, row) for number, example in examples
            for row in response_rows(tokenizer, example["messages"], f"{source}: row {number}")]  # fmt: skip
    report.split_conversations = True
    report.notes.append(
        f"the chat template has no {{% generation %}} markers: {len(examples)} conversations became {len(rows)} "
        "prompt-completion rows, one per assistant turn, so that only the responses are trained"
    )
    return rows


# ---- lengths ------------------------------------------------------------------------------------------------------


def _num_tokens(tokenizer, turns: list[dict], **kwargs) -> int:
    return len(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def limit_length(examples: list[tuple[int, dict]], tokenizer, max_length: int | None, report: DataReport):
    """Drop the rows whose prompt alone fills ``max_length``; count the rows TRL will truncate.

    The prompt is everything before the first trained token: the ``prompt`` of prompt-completion data, the turns
    before the first assistant turn of ``messages``. Lengths come from the tokenizer's own chat template.
    """
    report.max_length = max_length
    if max_length is None:
        return examples
    kept = []
    for number, example in examples:
        if "prompt" in example:
            prompt, full = example["prompt"], example["prompt"] + example["completion"]
        else:
            full = example["messages"]
            prompt = full[: next(i for i, t in enumerate(full) if t["role"] == "assistant")]
        if _num_tokens(tokenizer, prompt, add_generation_prompt=True) >= max_length:
            report.drop(f"prompt longer than max_length={max_length} tokens", number)
            continue
        report.truncated += _num_tokens(tokenizer, full) > max_length
        kept.append((number, example))
    report.kept = len(kept)
    return kept


def load_training_data(
    name_or_path: str,
    tokenizer,
    *,
    config: str | None = None,
    split: str = "train",
    layout: str = "auto",
    system_prompt: str | None = None,
    max_rows: int | None = None,
    shuffle_seed: int | None = None,
    bad_rows: str = "error",
    max_length: int | None = None,
    assistant_only_loss: bool | None = None,
):
    """Read, convert and length-check a dataset; returns a ``datasets.Dataset`` for TRL and the ``DataReport``.

    ``max_rows`` keeps the first rows (of a seeded shuffle with ``shuffle_seed``); row numbers in messages are
    always those of the source. Unless ``assistant_only_loss`` is False, conversations whose template cannot mark
    the assistant tokens become prompt-completion rows (``responses_only``). Raises ``UserError`` when nothing is
    left to train on.
    """
    import datasets

    rows = read_rows(name_or_path, config=config, split=split)
    numbers = list(range(1, len(rows) + 1))  # counted from 1, as people count lines
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(numbers)
    numbers = numbers[:max_rows]
    examples, report = convert_rows(
        [rows[n - 1] for n in numbers],
        layout,
        source=name_or_path,
        system_prompt=system_prompt,
        bad_rows=bad_rows,
        row_numbers=numbers,
    )
    report.rows_in_source = len(rows)
    if assistant_only_loss is not False:
        examples = responses_only(examples, tokenizer, name_or_path, report)
    examples = limit_length(examples, tokenizer, max_length, report)
    if not examples:
        raise UserError(f"no rows left to train on after filtering\n{report}")
    return datasets.Dataset.from_list([example for _, example in examples]), report


def training_system_prompt(name_or_path: str, layout: str = "auto", *, config: str | None = None,
                           split: str = "train") -> str | None:  # fmt: skip
    """The system turn the rows of a training set share (None when they have none), so that evaluation prompts can
    carry the one the model was fine-tuned with (``eksft eval --system_prompt_from``). Rows with different system
    turns, or some with one and some without, are an error: there is no one prompt to evaluate with."""
    examples, _ = convert_rows(read_rows(name_or_path, config=config, split=split), layout, source=name_or_path)
    found: dict[str | None, int] = {}
    for number, example in examples:
        turns = example["prompt"] if "prompt" in example else example["messages"]
        found.setdefault(turns[0]["content"] if turns and turns[0]["role"] == "system" else None, number)
    if len(found) > 1:
        shown = "; ".join(f"row {row}: {'no system turn' if text is None else repr(text[:60])}"
                          for text, row in sorted(found.items(), key=lambda item: item[1])[:3])  # fmt: skip
        raise UserError(f"{name_or_path}: the rows do not share one system prompt ({shown}); give the one to "
                        "evaluate with as --system_prompt")  # fmt: skip
    return next(iter(found))
