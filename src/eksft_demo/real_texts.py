"""KL(model || base), NLL and entropy per response token on held-out conversations, one value per text.

What ``eksft demo --profile real`` measures forgetting with: unlike ``eksft.analysis.shift.distribution_shift``,
this keeps one value per text (for standard errors over texts), measures the assistant turn only (the prompt is the
same for every model and mostly template), and runs the base once for all models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eksft.errors import UserError

from .progress import Progress

__all__ = ["measure_texts", "text_summary", "token_ids"]


def token_ids(tokenizer, conversation: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """The conversation through the chat template, as token ids (the template writes any special tokens)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encode_response(tokenizer, conversation: list[dict], max_length: int):
    """Input ids of the whole conversation and labels that keep only the assistant turn (the rest -100)."""
    import torch

    from eksft.stats import IGNORE_INDEX

    ids = token_ids(tokenizer, conversation)
    prompt = token_ids(tokenizer, conversation[:-1], add_generation_prompt=True)
    if ids[: len(prompt)] != prompt:
        raise UserError("the chat template does not render the prompt as a prefix of the conversation")
    ids = ids[:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt), len(ids)) + ids[len(prompt) :]
    return torch.tensor([ids]), torch.tensor([labels])


def measure_texts(models: Mapping[str, object], base_model, tokenizer, conversations: Sequence[list[dict]],
                  max_length: int = 384, progress: Progress | None = None) -> dict[str, dict]:  # fmt: skip
    """Per held-out conversation, sums over its assistant tokens: for each model in ``models`` ``kl`` (KL(model ||
    base)), ``entropy`` and ``nll`` (-log p of the actual token); for ``"base"`` its ``entropy`` and ``nll``.

    Returns ``{label: {"tokens": [n per text], "kl": [...], "entropy": [...], "nll": [...]}}``. The per-token
    values come from ``eksft.stats.token_stats``, as in ``eksft.analysis.shift``; unlike ``distribution_shift``
    this keeps one value per text (for standard errors over texts), measures the response only, and runs the base
    once for all models. Each text is one batch of its own: no padding, and memory bounded by one text's logits.
    """
    import torch

    from eksft.stats import token_stats

    out = {label: {"tokens": [], "kl": [], "entropy": [], "nll": []} for label in ["base", *models]}
    modes = {label: m.training for label, m in [("base", base_model), *models.items()]}
    for m in [base_model, *models.values()]:
        m.eval()
    try:
        with torch.no_grad():
            for i, conversation in enumerate(conversations):
                input_ids, labels = _encode_response(tokenizer, conversation, max_length)
                base_logits = base_model(input_ids=input_ids).logits
                stats = token_stats(base_logits, labels)
                count = stats.num_valid
                if count == 0:
                    raise UserError(f"held-out text {i}: its response has no token within {max_length} tokens")
                out["base"]["tokens"].append(count)
                out["base"]["kl"].append(0.0)
                out["base"]["entropy"].append(float(stats.entropy[stats.valid].double().sum()))
                out["base"]["nll"].append(float(stats.nll[stats.valid].double().sum()))
                for label, model in models.items():
                    stats = token_stats(model(input_ids=input_ids).logits, labels, base_logits)
                    out[label]["tokens"].append(count)
                    for name, values in (("kl", stats.kl), ("entropy", stats.entropy), ("nll", stats.nll)):
                        out[label][name].append(float(values[stats.valid].double().sum()))
                if progress is not None:
                    progress.update(i + 1)
    finally:
        for label, m in [("base", base_model), *models.items()]:
            m.train(modes[label])
    return out


def text_summary(sums: Mapping[str, list]) -> dict:
    """Token-weighted means (what the table shows) and per-text means (what the standard errors use)."""
    tokens = sum(sums["tokens"])
    summary = {"tokens": tokens, "texts": len(sums["tokens"])}
    for name in ("kl", "entropy", "nll"):
        summary[name] = sum(sums[name]) / tokens
        summary[f"{name}_per_text"] = [s / n for s, n in zip(sums[name], sums["tokens"], strict=True)]
    return summary
