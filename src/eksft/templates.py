"""Train only the responses, whatever the chat template.

The paper trains on the assistant's tokens only. For ``messages`` data TRL does that with ``assistant_only_loss``,
which needs ``{% generation %}`` markers in the chat template, or a template TRL knows how to patch (Llama 3,
Qwen 2.5 / 3, Gemma, Phi-3, DeepSeek, ...: ``trl.chat_template_utils.get_training_chat_template``). Most chat
templates shipped with models have no markers (SmolLM2, Mistral, many fine-tunes), and TRL then stops.

For those templates each conversation becomes conversational prompt-completion rows, **one per assistant turn**: the
prompt is every turn before it (earlier answers included, as context), the completion is that turn. TRL's completion
mask then trains exactly what the template renders for the assistant turn (its content and end-of-turn token), as
``assistant_only_loss`` would have: a conversation with three answers trains the same three answers.

That needs one property of the template: the prompt rendered with ``add_generation_prompt=True`` must be a prefix of
the prompt and completion rendered together (otherwise the boundary between them is unknown). ``check_prefix`` says
so in eksft's terms, naming the two ways out: ``--assistant_only_loss false`` or a template with markers
(``--chat_template_path``).
"""

from __future__ import annotations

from .errors import UserError

REMEDY = (
    "either train on every token, prompts included, with --assistant_only_loss false, or give a chat template whose "
    "assistant turns are wrapped in {% generation %} ... {% endgeneration %} with --chat_template_path FILE.jinja"
)


def can_mask_assistant(tokenizer) -> bool:
    """True when TRL can build assistant masks with this tokenizer's template (it has generation markers, or TRL
    ships a patched version of it)."""
    import jinja2
    from trl.chat_template_utils import get_training_chat_template

    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        get_training_chat_template(tokenizer)
    except (ValueError, TypeError, jinja2.TemplateError):
        return False
    return True


def apply_template_file(tokenizer, path: str | None) -> None:
    """``chat_template_path`` naming a ``.jinja`` file replaces the tokenizer's template, as ``SFTTrainer`` does
    (it applies it again, harmlessly); a model id or directory there is left to TRL, which copies that template."""
    if path is None or not path.endswith((".jinja", ".j2")):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    except OSError as err:
        raise UserError(f"--chat_template_path {path}: cannot read it ({err.strerror}); give a .jinja file") from None


def split_conversation(messages: list[dict]) -> list[dict]:
    """One ``{"prompt", "completion"}`` row per assistant turn of a conversation."""
    return [{"prompt": messages[:i], "completion": [turn]} for i, turn in enumerate(messages)
            if turn["role"] == "assistant"]  # fmt: skip


def response_rows(tokenizer, messages: list[dict], where: str) -> list[dict]:
    """``split_conversation``, each row checked with ``check_prefix``."""
    rows = split_conversation(messages)
    for row in rows:
        check_prefix(tokenizer, row, where)
    return rows


def check_prefix(tokenizer, example: dict, where: str) -> None:
    """A ``UserError`` when the template renders ``example["prompt"]`` (with the generation prompt) as something
    other than the start of the whole rendered conversation."""
    try:
        prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    except Exception as err:  # noqa: BLE001 - a template raises whatever its author wrote (jinja2, raise_exception)
        raise UserError(f"{where}: the chat template cannot render this conversation ({err}); fix the row or the "
                        "template (--chat_template_path FILE.jinja)") from None  # fmt: skip
    if full.startswith(prompt):
        return
    at = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full)))
    raise UserError(
        f"{where}: the chat template has no {{% generation %}} markers, and it renders the prompt on its own "
        f"differently from the start of the whole conversation (from character {at}: {prompt[at:at + 40]!r} alone, "
        f"{full[at:at + 40]!r} in the conversation), so the response tokens cannot be told apart from the prompt; "
        f"{REMEDY}"
    )


def conversations_to_prompt_completion(dataset, tokenizer):
    """A ``datasets`` dataset of ``messages`` rows as prompt-completion rows (``split_conversation``), every other
    column repeated for each new row; the prefix property is checked on every row (``check_prefix``)."""
    columns = list(dataset.column_names or next(iter(dataset)).keys())

    def split(batch: dict, indices: list[int]) -> dict:
        out = {name: [] for name in ["prompt", "completion", *(c for c in columns if c != "messages")]}
        for position, (index, messages) in enumerate(zip(indices, batch["messages"], strict=True)):
            for row in response_rows(tokenizer, messages, f"training data: row {index + 1}"):
                out["prompt"].append(row["prompt"])
                out["completion"].append(row["completion"])
                for name in columns:
                    if name != "messages":
                        out[name].append(batch[name][position])
        return out

    return dataset.map(split, batched=True, with_indices=True, remove_columns=columns)
