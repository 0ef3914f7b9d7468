"""Distribution shift: how far a fine-tuned model's next-token distributions moved from the base model's.

On held-out texts, at every position ``t`` that predicts a real (non-padding) token ``x_{t+1}``::

    p_t = model(. | x_<=t)      q_t = base(. | x_<=t)
    KL_t  = sum_v p_t(v) (log p_t(v) - log q_t(v))      KL(model || base), in nats
    H_t   = -sum_v p_t(v) log p_t(v)                    entropy of the model   (H0_t: the same for the base)

``mean_kl`` is the mean of ``KL_t`` over all such positions of all texts (a token-weighted mean, not a mean of
per-text means), and ``mean_entropy`` / ``base_mean_entropy`` likewise. The per-token values come from
``eksft.stats.token_stats`` (labels = the input ids, padding = -100), the same code the training objectives use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..stats import IGNORE_INDEX, token_stats

__all__ = ["ShiftReport", "TokenValues", "distribution_shift", "load_model", "token_values"]


@dataclass
class TokenValues:
    """Per-token values at every predicted position of the texts, in order (for histograms): 1-D float64 arrays."""

    kl: np.ndarray  # KL(model || base)
    entropy: np.ndarray  # entropy of the model
    base_entropy: np.ndarray  # entropy of the base model


@dataclass
class ShiftReport:
    mean_kl: float  # mean KL(model || base) per token, nats
    mean_entropy: float  # mean entropy of the model per token, nats
    base_mean_entropy: float  # mean entropy of the base per token, nats
    num_tokens: int  # predicted positions averaged over
    num_texts: int
    tokens: TokenValues | None = None  # the per-token values, when asked for (keep_tokens=True)

    def to_dict(self) -> dict:
        return {"mean_kl": self.mean_kl, "mean_entropy": self.mean_entropy,
                "base_mean_entropy": self.base_mean_entropy, "num_tokens": self.num_tokens,
                "num_texts": self.num_texts}  # fmt: skip


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has neither a pad nor an eos token to pad a batch with")
    pad_token = tokenizer.pad_token
    if pad_token is None:  # any id will do: padded positions are masked out and ignored
        tokenizer.pad_token = tokenizer.eos_token
    try:
        batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                          padding_side="right")  # fmt: skip
    finally:
        if pad_token is None:
            tokenizer.pad_token = None
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def _iter_values(model, base_model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int,
                 progress: bool, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``(kl, entropy, base_entropy)`` of the valid positions of each text, 1-D float64 on the CPU."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise UserError(f"max_length must be >= 2 (one token to predict another), got {max_length}")
    device, base_device = _device_of(model), _device_of(base_model)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            input_ids, attention_mask = _encode(tokenizer, chunk, max_length)  # [B, T] each
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)  # [B, T]: padding predicts nothing
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            base_logits = base_model(
                input_ids=input_ids.to(base_device), attention_mask=attention_mask.to(base_device)
            ).logits.to(logits.device)  # [B, T, V]
            if base_logits.shape[-1] != logits.shape[-1]:
                raise UserError(f"the model predicts {logits.shape[-1]} token ids and the base {base_logits.shape[-1]}: "
                                "their vocabularies differ, so KL(model || base) is undefined")  # fmt: skip
            labels = labels.to(logits.device)
            # one sequence at a time: token_stats holds a few float32 [tokens, vocab] tensors, which for a 150k
            # vocabulary is gigabytes per thousand tokens
            for row in range(len(chunk)):
                rows = slice(row, row + 1)
                try:
                    stats = token_stats(logits[rows], labels[rows], base_logits[rows])
                    base_stats = token_stats(base_logits[rows], labels[rows])
                except ValueError as err:
                    raise UserError(f"held-out text {start + row}: {err}") from None
                valid = stats.valid  # [1, T-1]
                yield (stats.kl[valid].double().cpu(), stats.entropy[valid].double().cpu(),
                       base_stats.entropy[valid].double().cpu())  # fmt: skip
            bar.update(len(chunk))


def distribution_shift(
    model: torch.nn.Module,
    base_model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 4,
    max_length: int = 1024,
    *,
    keep_tokens: bool = False,
    progress: bool = True,
    desc: str = "distribution shift",
) -> ShiftReport:
    """Mean KL(model || base) and the mean entropies of both on ``texts`` (see the module docstring).

    The models may sit on any device (inputs follow each model); both are run in eval mode under ``no_grad`` and
    put back in the mode they were in. Texts longer than ``max_length`` tokens are truncated. ``keep_tokens=True``
    also returns every per-token value (``ShiftReport.tokens``) for histograms.
    """
    texts = list(texts)
    if not texts:
        raise UserError("no held-out texts to measure the distribution shift on")
    if any(not isinstance(text, str) or not text for text in texts):
        raise UserError("every held-out text must be a non-empty string")
    modes = (model.training, base_model.training)
    model.eval()
    base_model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # kl, entropy, base entropy
    count = 0
    kept: list[tuple[torch.Tensor, ...]] = []
    try:
        for values in _iter_values(model, base_model, tokenizer, texts, batch_size, max_length, progress, desc):
            sums += torch.stack([v.sum() for v in values])
            count += values[0].numel()
            if keep_tokens:
                kept.append(values)
    finally:
        model.train(modes[0])
        base_model.train(modes[1])
    if count == 0:
        raise UserError("the held-out texts have no token to predict (each needs at least two tokens)")
    kl, entropy, base_entropy = (sums / count).tolist()
    tokens = None
    if keep_tokens:
        tokens = TokenValues(*(torch.cat([batch[i] for batch in kept]).numpy() for i in range(3)))
    return ShiftReport(kl, entropy, base_entropy, count, len(texts), tokens)


def token_values(model, base_model, tokenizer, texts: Sequence[str], batch_size: int = 4, max_length: int = 1024,
                 *, progress: bool = True) -> TokenValues:  # fmt: skip
    """Per-token KL(model || base), model entropy and base entropy on ``texts`` (what the histograms plot)."""
    report = distribution_shift(model, base_model, tokenizer, texts, batch_size, max_length, keep_tokens=True,
                                progress=progress, desc="per-token values")  # fmt: skip
    assert report.tokens is not None
    return report.tokens


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, float32 elsewhere (CPU half precision is slow and lossy)."""
    if name == "auto":
        cuda = device.startswith("cuda")
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"dtype must be one of auto, {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: str = "auto", *,
               trust_remote_code: bool = False) -> torch.nn.Module:  # fmt: skip
    """A Hugging Face causal LM from a local directory, on ``device``, in eval mode; a UserError if it cannot load.

    Weights come from safetensors files only, and the model's own Python code runs only with ``trust_remote_code``:
    a pickled checkpoint or remote code can run anything when loaded.
    """
    from transformers import AutoModelForCausalLM

    from .drift import find_weights

    find_weights(path)  # a clear error (with the conversion command for a pickled checkpoint) before transformers'
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype, device), use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)  # fmt: skip
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: cannot load a causal language model ({err})") from None
    return model.to(device).eval()
