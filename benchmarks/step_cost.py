"""Cost of one training step (forward + backward, no optimizer step): EKSFT chunked vs TRL's SFT, its floor, the
materialised oracle and the published three-pass pattern.

    python benchmarks/step_cost.py --preset cpu                # tiny trunk, V=65,536, 384 tokens, under a minute
    python benchmarks/step_cost.py --preset cpu-4k             # the same at 4,096 tokens, minutes
    eksft smollm2 /tmp/smollm2                                 # writes SmolLM2-135M-Instruct (float32), offline
    python benchmarks/step_cost.py --preset cpu-smollm2 --model /tmp/smollm2   # a real model, 2 x 512 tokens
    python benchmarks/step_cost.py --preset cpu-smollm2 --model /tmp/smollm2 --phases  # + where the time goes
    python benchmarks/step_cost.py --preset tiny --model DIR  # any local model at a preset's shape, dtype, device
    python benchmarks/step_cost.py --preset gpu --out gpu.jsonl  # random-init Qwen3-0.6B @4k and @16k, Qwen3-4B @8k

``--model DIR`` measures a pretrained model read from a local directory
(``AutoModelForCausalLM.from_pretrained(DIR, dtype=...)``, its own weights, loaded twice: the policy and a frozen
reference equal to it, as at the first step of a fine-tuning) at the batch, sequence length, dtype and device of the
preset's shapes; the presets whose shapes name no architecture (``cpu-smollm2``) need it. Its token ids are real
text when DIR has a tokenizer: the conversations and MATH problems of ``eksft_demo/data/*.jsonl`` rendered with the
tokenizer's chat template, concatenated and repeated as needed; otherwise (and for the random-init presets) random
ids in the vocabulary. Either way the first 1/8 of each sequence is prompt (labels -100). The weights are copied out
of the safetensors file mapping into ordinary memory before anything is measured, so that no step faults them in.

Variants (policy and a frozen reference both resident in every one, as in docs/design.md section 3):

* ``sft``: TRL's SFT loss path: the model patched by ``trl.trainer.utils.add_fused_lm_head`` with the outputs
  ``SFTTrainer`` asks for, ``model(**inputs, fused_lm_head=True)``, loss = mean NLL of the valid tokens.
* ``floor``: ``sft`` plus a forward of the reference's trunk without gradient: what any EKSFT step must cost.
* ``eksft_chunked``: policy hidden states (grad) + reference hidden states (no grad) + ``chunked_token_stats`` +
  ``compute_objective("eksft")`` (default backend); ``eksft_chunked_torch`` forces ``backend="torch"``.
* ``eksft_materialised``: full logits of both models, ``token_stats``, ``compute_objective("eksft")``.
* ``published``: the published trainer's pattern re-implemented (docs/design.md section 1): a policy forward without
  gradient and a reference forward for the statistics, full log-probabilities kept, then a policy forward with
  gradient, its probabilities materialised again, the masks one token early, the KL term on ``probs -
  log_probs_ref``, the per-step "dynamic lambda", and its two ``torch.cuda.empty_cache()`` calls.

Each variant runs in its own child process (forked from this one after the imports, so that peak memory is
clean and the imports are paid once). One JSON line per variant on stdout (and in ``--out``): variant, shape,
tokens, median step seconds over ``--steps`` steps after ``--warmup`` warm-up steps, peak memory, device. Peak
memory is ``torch.cuda.max_memory_allocated`` on a GPU (weights included, from the models' build on); on the CPU it
is the resident-set high-water mark above the resident set right after the models are built (``VmHWM`` reset through
``/proc/self/clear_refs``), i.e. what the steps add. For ``eksft_chunked*`` the child also runs the chunked and the
materialised loss on the same inputs, after the timed steps, and reports the largest absolute difference of the
loss and of the LM-head weight's gradient. With ``--phases`` the child then runs ``--steps`` more steps cut at the
last hidden state (handed to the head as a leaf) and reports the median seconds of each part: the reference's trunk,
the policy's trunk forward, the head forward (LM heads, statistics, objective), its backward, the trunk's backward,
and the memory the head adds at its peak (``sft``, ``floor``, ``eksft_chunked*``, ``eksft_materialised``). A
Markdown table with the ratios ends the output.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import trl
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3Config
from transformers.modeling_outputs import BaseModelOutputWithPast
from trl.trainer.utils import add_fused_lm_head

from eksft.chunked import chunked_token_stats
from eksft.heads import hidden_states, lm_head_of
from eksft.objectives import compute_objective
from eksft.stats import IGNORE_INDEX, token_stats
from eksft_demo.real_data import general_conversations, math_solutions

GIB = 2**30

# Qwen3's published architectures (config.json of Qwen/Qwen3-0.6B and Qwen/Qwen3-4B), random weights
QWEN3_0_6B = dict(
    vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, rope_theta=1_000_000, rms_norm_eps=1e-6,
    max_position_embeddings=40_960,
)  # fmt: skip
QWEN3_4B = dict(
    vocab_size=151_936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, rope_theta=1_000_000, rms_norm_eps=1e-6,
    max_position_embeddings=40_960,
)  # fmt: skip
# A tiny trunk with a large vocabulary: on a CPU the step cost is the LM head's
TINY_65K = dict(
    vocab_size=65_536, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
)  # fmt: skip
TINY_4K = {**TINY_65K, "vocab_size": 4096, "hidden_size": 32, "intermediate_size": 64}


@dataclass
class Shape:
    name: str
    config: dict | None  # a random-init Qwen3's Qwen3Config arguments; None: the pretrained model of --model
    batch: int
    seq_len: int
    model_dir: str | None = None  # a pretrained model's local directory (from --model)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def vocab_size(self) -> int:
        if self.model_dir is not None:
            return _pretrained_vocab_size(self.model_dir)
        if self.config is None:
            raise ValueError(f"shape {self.name!r} is a pretrained model's: it needs --model DIR")
        return self.config["vocab_size"]


@cache
def _pretrained_vocab_size(model_dir: str) -> int:
    return AutoConfig.from_pretrained(model_dir).get_text_config().vocab_size


@dataclass
class Preset:
    device: str
    dtype: str
    gradient_checkpointing: bool
    shapes: list[Shape]
    variants: list[str] = field(
        default_factory=lambda: ["sft", "floor", "eksft_chunked", "eksft_materialised", "published"]
    )
    steps: int = 5
    warmup: int = 1
    # objectives compared between eksft_chunked and eksft_materialised (global_reg: no selection, see below)
    compare: tuple[str, ...] = ("eksft",)


PRESETS = {
    # A 2-core CPU does one [4096 x 65536] float32 projection in ~0.5 s and one elementwise pass over it in ~0.3 s:
    # at 4,096 tokens the five variants take ~10 minutes, so the quick preset (under a minute) scores 384 tokens of
    # the same vocabulary; "cpu-4k" is the 4,096-token shape
    "cpu": Preset("cpu", "float32", False, [Shape("tiny-v65k", TINY_65K, batch=2, seq_len=192)]),
    "cpu-4k": Preset("cpu", "float32", False, [Shape("tiny-v65k-4k", TINY_65K, batch=4, seq_len=1024)]),
    # a real model (--model DIR; `eksft smollm2 DIR` writes SmolLM2-135M-Instruct: 30 layers, hidden 576, V=49,152)
    "cpu-smollm2": Preset(
        "cpu",
        "float32",
        False,
        [Shape("smollm2-135m", None, batch=2, seq_len=512)],
        variants=["sft", "floor", "eksft_chunked", "eksft_materialised"],
    ),
    "gpu": Preset(
        "cuda",
        "bfloat16",
        True,
        [
            # the quickest first: gpu_check.sh gives this preset the time left, and a cut run keeps finished rows
            Shape("qwen3-0.6b-4k", QWEN3_0_6B, batch=1, seq_len=4096),
            Shape("qwen3-0.6b", QWEN3_0_6B, batch=1, seq_len=16_384),
            Shape("qwen3-4b", QWEN3_4B, batch=1, seq_len=8192),
        ],
        variants=["sft", "floor", "eksft_chunked", "eksft_chunked_torch", "eksft_materialised", "published"],
        warmup=2,
        compare=("eksft", "global_reg"),
    ),  # fmt: skip
    # seconds, for the smoke test
    "tiny": Preset("cpu", "float32", False, [Shape("tiny-v4k", TINY_4K, batch=2, seq_len=128)]),
}
PROMPT_FRACTION = 1 / 8  # the first tokens of every sequence are a prompt (labels -100)


# --------------------------------------------------------------------------------------------------------------------
# The steps. Each takes (policy, reference, batch) and runs forward + backward.


def _nll(outputs):
    # SFTTrainer.compute_loss with the default loss_type="nll"
    return -outputs.log_probs.sum() / outputs.label_mask.sum().clamp(min=1)


def sft_step(policy, reference, batch):
    loss = _nll(policy(**batch, fused_lm_head=True))
    loss.backward()
    return loss


def floor_step(policy, reference, batch):
    with torch.no_grad():
        hidden_states(reference, **batch)  # the reference's trunk, its LM head never called
    return sft_step(policy, reference, batch)


def eksft_chunked_loss(policy, reference, batch, backend="auto", objective="eksft"):
    with torch.no_grad():
        ref_hidden = hidden_states(reference, **batch)
    hidden = hidden_states(policy, **batch)
    stats = chunked_token_stats(
        hidden, batch["labels"], lm_head_of(policy), ref_hidden, lm_head_of(reference), backend=backend
    )
    return compute_objective(objective, stats).loss


def eksft_materialised_loss(policy, reference, batch, objective="eksft"):
    model_inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ref_logits = reference(**model_inputs).logits
    logits = policy(**model_inputs).logits
    return compute_objective(objective, token_stats(logits, batch["labels"], ref_logits)).loss


def _backward(loss_fn, **kwargs):
    def step(policy, reference, batch):
        loss = loss_fn(policy, reference, batch, **kwargs)
        loss.backward()
        return loss

    return step


def _empty_cache():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def published_step(policy, reference, batch, rho=0.2, lambda_entropy=0.05, lambda_kl=0.05):
    """The published EKSFT trainer's compute_loss (MINE-USTC/EKSFT, src/llamafactory/train/eksft/trainer.py),
    re-implemented step for step, its mistakes included (docs/design.md section 1)."""
    labels = batch["labels"]
    attention_mask = labels.ne(IGNORE_INDEX)  # unshifted: the statistics of logits[t] are paired with labels[t]
    # pass 1 and 2: policy and reference without gradient, full log-probabilities kept for the KL term later
    with torch.no_grad():
        logits_model = policy(**batch).logits  # labels are in the inputs: the model computes its own loss too
        logits_ref = reference(**batch).logits
    log_probs_model = F.log_softmax(logits_model, dim=-1)
    log_probs_ref = F.log_softmax(logits_ref, dim=-1)
    probs_model = log_probs_model.exp()
    entropy = -torch.sum(probs_model * log_probs_model, dim=-1) * attention_mask
    kl = torch.sum(probs_model * (log_probs_model - log_probs_ref).clamp(min=-1e10, max=1e10), dim=-1) * attention_mask
    del probs_model, logits_model, logits_ref
    k = max(0, int(attention_mask.sum().item() * rho))
    flat_kl = kl.clone().masked_fill(~attention_mask, float("-inf")).view(-1)
    flat_entropy = entropy.clone().masked_fill(~attention_mask, float("-inf")).view(-1)
    kl_mask = torch.zeros_like(flat_kl, dtype=torch.bool)
    kl_mask[flat_kl.topk(k).indices] = True
    entropy_mask = torch.zeros_like(flat_entropy, dtype=torch.bool)
    entropy_mask[flat_entropy.topk(k).indices] = True
    union = (kl_mask | entropy_mask).view_as(labels)
    _empty_cache()
    # pass 3: policy with gradient, probabilities materialised again
    outputs = policy(**batch)
    logits = outputs.logits
    vocab_size = logits.size(-1)
    probs = torch.softmax(logits, dim=-1)
    del outputs
    _empty_cache()
    labels_ce = labels.masked_fill(union, IGNORE_INDEX)
    ce_loss = policy.loss_function(logits, labels_ce, vocab_size=vocab_size)
    max_entropy = torch.log(torch.tensor(vocab_size, device=logits.device))
    token_entropy = -(probs * torch.log(probs + 1e-12)).sum(dim=-1) / max_entropy
    entropy_loss = (token_entropy * entropy_mask.view_as(token_entropy).float()).sum() / (entropy_mask.sum() + 1e-12)
    # not a KL: probs where log-probs belong
    kl_tokens = torch.sum(probs * (probs - log_probs_ref).clamp(min=-1e10, max=1e10), dim=-1) * attention_mask
    kl_loss = (kl_tokens * kl_mask.view_as(kl_tokens).float()).sum() / (kl_mask.sum() + 1e-12)
    # the "dynamic lambda": re-read every step, so it never carries over (two host syncs per step)
    lambda_entropy *= 1.05 if entropy_loss.item() < 0.0 else 0.95
    lambda_kl *= 1.05 if kl_loss.item() > 0.0 else 0.95
    loss = ce_loss - lambda_entropy * entropy_loss + lambda_kl * kl_loss
    loss.backward()
    return loss


# --------------------------------------------------------------------------------------------------------------------
# Where the time goes (--phases): the step cut at the last hidden state, which is handed to the head as a leaf


class _GivenHidden(torch.nn.Module):
    """Stands in for a model's backbone: returns the given last hidden state (TRL's fused forward then runs its LM
    head alone, exactly as in ``sft_step``)."""

    def __init__(self, hidden, trunk):
        super().__init__()
        self.hidden = hidden
        self.embeddings = (trunk.get_input_embeddings(),)  # a tuple: not registered as a submodule

    def forward(self, *args, **kwargs):
        return BaseModelOutputWithPast(last_hidden_state=self.hidden)

    def get_input_embeddings(self):  # get_output_embeddings() asks for it
        return self.embeddings[0]


def phase_times(policy, reference, batch, variant: str, device) -> dict:
    """Seconds of each part of one step of ``variant`` (sft, floor, eksft_chunked*, eksft_materialised): the
    reference's trunk without gradient, the policy's trunk forward, the head and loss forward (LM heads, statistics,
    objective), its backward down to the last hidden state and the head's weight, and the trunk's backward; and
    ``head_peak_gib``, the memory the head's forward and backward add at their peak to what is held before them
    (the trunks' activations, the hidden states), measured as ``PeakMemory`` measures the step."""
    times = {}

    def timed(name, fn):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times[name] = time.perf_counter() - start
        return result

    labels = batch["labels"]
    if variant != "sft":
        with torch.no_grad():
            ref_hidden = timed("reference_trunk", lambda: hidden_states(reference, **batch))
    trunk_out = timed("policy_trunk_fwd", lambda: hidden_states(policy, **batch))
    hidden = trunk_out.detach().requires_grad_(True)
    memory = PeakMemory(device)
    memory.start()
    held = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    if variant in ("sft", "floor"):
        prefix = policy.base_model_prefix
        trunk = getattr(policy, prefix)
        setattr(policy, prefix, _GivenHidden(hidden, trunk))
        try:
            loss = timed("head_fwd", lambda: _nll(policy(**batch, fused_lm_head=True)))
        finally:
            setattr(policy, prefix, trunk)
    elif variant.startswith("eksft_chunked"):
        backend = {"eksft_chunked": "auto", "eksft_chunked_torch": "torch", "eksft_chunked_trl": "trl"}[variant]
        stats = timed(
            "head_fwd",
            lambda: chunked_token_stats(
                hidden, labels, lm_head_of(policy), ref_hidden, lm_head_of(reference), backend=backend
            ),
        )
        times["head_stats_fwd"] = times["head_fwd"]
        loss = timed("head_objective", lambda: compute_objective("eksft", stats).loss)
        times["head_fwd"] += times["head_objective"]
    elif variant == "eksft_materialised":

        def materialised():
            with torch.no_grad():
                ref_logits = reference.get_output_embeddings()(ref_hidden)
            logits = policy.get_output_embeddings()(hidden)
            return compute_objective("eksft", token_stats(logits, labels, ref_logits)).loss

        loss = timed("head_fwd", materialised)
    else:
        raise ValueError(f"--phases does not cut {variant!r}")
    timed("head_bwd", lambda: loss.backward())
    times["head_peak_gib"] = memory.peak_gib() - held
    timed("policy_trunk_bwd", lambda: trunk_out.backward(hidden.grad))
    return times


STEPS = {
    "sft": sft_step,
    "floor": floor_step,
    "eksft_chunked": _backward(eksft_chunked_loss),
    "eksft_chunked_torch": _backward(eksft_chunked_loss, backend="torch"),
    "eksft_chunked_trl": _backward(eksft_chunked_loss, backend="trl"),
    "eksft_materialised": _backward(eksft_materialised_loss),
    "published": published_step,
}


# --------------------------------------------------------------------------------------------------------------------
# Measuring one variant (in a child process)


def _rss_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMemory:
    """CUDA max allocated, or the RSS high-water mark above the RSS at ``start()`` (CPU, Linux)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_hwm_above_model_build"

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self.baseline = _rss_bytes("VmRSS")

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / GIB
        return (_rss_bytes("VmHWM") - self.baseline) / GIB


LOGIT_STD = 3.0


def build_model(config: dict, device: torch.device, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(Qwen3Config(**config), dtype=dtype)
    # Random-init logits are nearly uniform (std 0.02 * sqrt(H)): every entropy is within rounding of log|V| and the
    # top-rho selection would be decided by rounding. A head of std LOGIT_STD / sqrt(H) gives logits of std ~3,
    # peaked distributions like a trained model's (the cost of a step does not depend on it).
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.normal_(0.0, LOGIT_STD / math.sqrt(head.shape[1]))
    return model


def load_pretrained(model_dir: str, device: torch.device, dtype: torch.dtype):
    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    # from_pretrained leaves float32 CPU weights mapped from the safetensors file, faulted in when first touched (the
    # first step would then add the weights of both models to the resident set): copy them into ordinary memory.
    # parameters() yields a tied weight once, so the tie is kept.
    if device.type == "cpu":
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.data = tensor.data.clone()
    return model


def _demo_texts(tokenizer) -> list[str]:
    """The demo's conversations and MATH problems (user: problem, assistant: solution) as the model would see them."""
    conversations = general_conversations() + [
        [{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": row["solution"]}]
        for row in math_solutions()
    ]
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template(messages, tokenize=False) for messages in conversations]
    return ["\n\n".join(message["content"] for message in messages) + "\n\n" for messages in conversations]


def text_token_ids(model_dir: str, count: int, vocab_size: int) -> torch.Tensor | None:
    """``count`` token ids of the demo texts (repeated as needed) with the tokenizer in ``model_dir``; None when it
    has none or its ids do not fit the model's vocabulary."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    ids = []
    for text in _demo_texts(tokenizer):
        ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # no "longer than max" warning
    if not ids or max(ids) >= vocab_size:
        return None
    stream = torch.tensor(ids, dtype=torch.long)
    return stream.repeat(math.ceil(count / len(stream)))[:count]


def make_batch(shape: Shape, device: torch.device) -> tuple[dict, str]:
    """The inputs and labels, and where the token ids come from ("text" or "random")."""
    input_ids = None
    if shape.model_dir is not None:
        input_ids = text_token_ids(shape.model_dir, shape.tokens, shape.vocab_size)
    source = "random"
    if input_ids is None:
        gen = torch.Generator().manual_seed(1234)
        input_ids = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq_len), generator=gen)
    else:
        input_ids, source = input_ids.view(shape.batch, shape.seq_len), "text"
    labels = input_ids.clone()
    labels[:, : int(shape.seq_len * PROMPT_FRACTION)] = IGNORE_INDEX
    return {"input_ids": input_ids.to(device), "labels": labels.to(device)}, source


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare_with_materialised(policy, reference, batch, backend: str, objectives: tuple[str, ...]) -> dict:
    """Loss and LM-head weight gradient of the chunked and the materialised path on the same inputs: for ``eksft``,
    and optionally ``global_reg`` (nll, entropy and KL on every token, no selection: the numerical agreement alone;
    in bf16 a position whose entropy or KL is within rounding of the top-rho threshold can be selected by one path
    only, which moves the eksft loss by that token's terms)."""
    row = {}
    for objective in objectives:
        suffix = "" if objective == "eksft" else f"_{objective}"
        results = []
        for loss_fn, kwargs in ((eksft_chunked_loss, {"backend": backend}), (eksft_materialised_loss, {})):
            policy.zero_grad(set_to_none=True)
            loss = loss_fn(policy, reference, batch, objective=objective, **kwargs)
            loss.backward()
            results.append((loss.detach().double(), lm_head_of(policy).weight.grad.detach().double()))
            policy.zero_grad(set_to_none=True)
            del loss
            _empty_cache()
        (loss_c, grad_c), (loss_m, grad_m) = results
        row.update({
            f"loss{suffix}": loss_m.item(),
            f"max_abs_diff_loss{suffix}": (loss_c - loss_m).abs().item(),
            f"max_abs_diff_lm_head_grad{suffix}": (grad_c - grad_m).abs().max().item(),
            f"max_abs_lm_head_grad{suffix}": grad_m.abs().max().item(),
        })  # fmt: skip
    return row


PHASES = ("reference_trunk", "policy_trunk_fwd", "head_fwd", "head_bwd", "policy_trunk_bwd")


def run_variant(preset: Preset, shape: Shape, variant: str, steps: int, warmup: int, phases: bool = False) -> dict:
    device = torch.device(preset.device)
    dtype = getattr(torch, preset.dtype)
    if shape.model_dir is not None:
        policy = load_pretrained(shape.model_dir, device, dtype)
        reference = load_pretrained(shape.model_dir, device, dtype).eval().requires_grad_(False)
    else:
        policy = build_model(shape.config, device, dtype, seed=0)
        reference = build_model(shape.config, device, dtype, seed=1).eval().requires_grad_(False)
    policy.train()
    if preset.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.config.use_cache = False
    if variant in ("sft", "floor"):
        add_fused_lm_head(policy, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    batch, token_ids = make_batch(shape, device)
    step = STEPS[variant]
    memory = PeakMemory(device)
    memory.start()
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        step(policy, reference, batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        policy.zero_grad(set_to_none=True)
    row = {
        "variant": variant,
        "shape": shape.name,
        "tokens": shape.tokens,
        "valid_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "vocab_size": shape.vocab_size,
        "model": shape.model_dir or "random-init Qwen3",
        "token_ids": token_ids,
        "dtype": preset.dtype,
        "gradient_checkpointing": preset.gradient_checkpointing,
        "median_step_s": statistics.median(times),
        "step_s": [round(t, 4) for t in times],
        "peak_mem_gib": memory.peak_gib(),
        "peak_mem_kind": memory.kind,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
    }
    if phases and variant != "published":
        # after the timed steps (so that they do not change the peak memory): `steps` cut steps, median of each part
        cuts = []
        for _ in range(steps):
            cuts.append(phase_times(policy, reference, batch, variant, device))
            policy.zero_grad(set_to_none=True)
        row["phases_s"] = {name: statistics.median(cut[name] for cut in cuts) for name in cuts[0]}
        row["head_peak_gib"] = row["phases_s"].pop("head_peak_gib")
    if variant.startswith("eksft_chunked"):
        backend = {"eksft_chunked": "auto", "eksft_chunked_torch": "torch", "eksft_chunked_trl": "trl"}[variant]
        row["backend"] = backend
        try:
            row.update(compare_with_materialised(policy, reference, batch, backend, preset.compare))
        except torch.OutOfMemoryError:
            row["comparison_error"] = "out of memory (the materialised path)"
    return row


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} ({torch.get_num_threads()} threads)"


def _child(conn, preset, shape, variant, steps, warmup, phases):
    try:
        conn.send(run_variant(preset, shape, variant, steps, warmup, phases))
    except torch.OutOfMemoryError:
        conn.send({"variant": variant, "shape": shape.name, "tokens": shape.tokens, "error": "out of memory"})
    except BaseException:  # report, never hang the parent
        conn.send({"variant": variant, "shape": shape.name, "tokens": shape.tokens, "error": traceback.format_exc()})
    finally:
        conn.close()


def measure(preset: Preset, shape: Shape, variant: str, steps: int, warmup: int, phases: bool = False) -> dict:
    """One variant in a forked child: the imports are shared, the memory (and the CUDA context) its own."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, preset, shape, variant, steps, warmup, phases))
    process.start()
    send.close()
    try:
        row = receive.recv()
    except EOFError:
        row = {"variant": variant, "shape": shape.name, "tokens": shape.tokens, "error": "the child process died"}
    process.join()
    if process.exitcode not in (0, None) and "error" not in row:
        row["error"] = f"exit code {process.exitcode}"
    return row


# --------------------------------------------------------------------------------------------------------------------
# Report


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summary_table(rows: list[dict]) -> str:
    """Per shape: every variant's time and memory, and the ratios the targets are stated in (docs/design.md section 3)."""
    lines = []
    for shape in dict.fromkeys(row["shape"] for row in rows):
        by_variant = {row["variant"]: row for row in rows if row["shape"] == shape and "error" not in row}
        errors = [row for row in rows if row["shape"] == shape and "error" in row]
        floor_s = by_variant.get("floor", {}).get("median_step_s")
        sft_mem = by_variant.get("sft", {}).get("peak_mem_gib")
        first = next(iter(by_variant.values()), {})
        lines += [
            f"### {shape}: {first.get('tokens')} tokens, V={first.get('vocab_size')}, {first.get('dtype')}, "
            f"{first.get('device')}"
            + (
                ""
                if first.get("model", "random-init Qwen3") == "random-init Qwen3"
                else f", pretrained {first['model']} ({first.get('token_ids')} token ids)"
            ),
            "",
            f"| variant | median step (s) | peak memory (GiB, {first.get('peak_mem_kind')}) | time / floor | memory / sft |",
            "|---|---|---|---|---|",
        ]
        for variant, row in by_variant.items():
            t, m = row["median_step_s"], row["peak_mem_gib"]
            tf, ms = _ratio(t, floor_s), _ratio(m, sft_mem)
            lines.append(
                f"| {variant} | {t:.3f} | {m:.3f} | {'' if tf is None else f'{tf:.2f}x'} | "
                f"{'' if ms is None else f'{ms:.2f}x'} |"
            )
        for row in errors:
            lines.append(f"| {row['variant']} | error: {row['error'].strip().splitlines()[-1]} | | | |")
        ratios = []
        for name, variant in (("eksft_chunked", "eksft_chunked"), ("eksft_chunked (torch)", "eksft_chunked_torch")):
            row = by_variant.get(variant)
            if row is None:
                continue
            ratios += [
                (f"{name} / floor, time", _ratio(row["median_step_s"], floor_s), "<= 1.10"),
                (f"{name} / sft, memory", _ratio(row["peak_mem_gib"], sft_mem), "<= 1.05"),
                (f"{name} / eksft_materialised, memory",
                 _ratio(row["peak_mem_gib"], by_variant.get("eksft_materialised", {}).get("peak_mem_gib")), "<= 0.25 (presets cpu, cpu-4k)"),
            ]  # fmt: skip
            for suffix, objective in (("", "eksft"), ("_global_reg", "global_reg")):
                if f"max_abs_diff_loss{suffix}" in row:
                    lines += ["", (
                        f"{name} vs materialised, `{objective}` on the same inputs: |loss diff| = "
                        f"{row[f'max_abs_diff_loss{suffix}']:.3g} (loss {row[f'loss{suffix}']:.4f}), max |LM-head grad "
                        f"diff| = {row[f'max_abs_diff_lm_head_grad{suffix}']:.3g} (max |grad| "
                        f"{row[f'max_abs_lm_head_grad{suffix}']:.3g})"
                    )]  # fmt: skip
        if "published" in by_variant:
            ratios.append(("published / floor, time", _ratio(by_variant["published"]["median_step_s"], floor_s), ""))
        lines += ["", "| ratio | value | target |", "|---|---|---|"]
        for name, value, target in ratios:
            lines.append(f"| {name} | {'n/a' if value is None else f'{value:.2f}x'} | {target} |")
        cut = {variant: row["phases_s"] for variant, row in by_variant.items() if "phases_s" in row}
        if cut:
            lines += [
                "",
                "Where the time goes (--phases: the step cut at the last hidden state; medians, seconds):",
                "",
                f"| variant | {' | '.join(PHASES)} | sum | timed step | head peak memory (GiB) |",
                "|---|" + "---|" * (len(PHASES) + 3),
            ]
            for variant, times in cut.items():
                cells = [f"{times[name]:.3f}" if name in times else "" for name in PHASES]
                total = sum(times[name] for name in PHASES if name in times)
                row = by_variant[variant]
                lines.append(
                    f"| {variant} | {' | '.join(cells)} | {total:.3f} | {row['median_step_s']:.3f} | "
                    f"{row.get('head_peak_gib', float('nan')):.3f} |"
                )
            if "head_stats_fwd" in cut.get("eksft_chunked", {}):
                times = cut["eksft_chunked"]
                lines += ["", (
                    f"eksft_chunked's head_fwd = chunked_token_stats {times['head_stats_fwd']:.3f} s + "
                    f"compute_objective {times['head_objective']:.3f} s"
                )]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _fixed_mmap_threshold() -> None:
    """Make glibc serve every allocation of 1 MiB or more with its own mmap, returned to the OS when freed, so that
    the resident set follows the live tensors (by default freed tiles below a moving threshold stay in the heap and
    the high-water mark measures the allocator's history as much as the variant's peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also stops its adjustment
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--model", metavar="DIR",
        help="a pretrained model's local directory, measured at the preset's shapes, dtype and device instead of its\n"
             "random-init architectures (needed by cpu-smollm2; `eksft smollm2 DIR` writes SmolLM2-135M-Instruct)",
    )  # fmt: skip
    parser.add_argument("--variants", help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--shapes", help="comma-separated subset of the preset's shape names")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default: the preset's, 5)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant (default: the preset's)")
    parser.add_argument(
        "--phases", action="store_true",
        help="after the timed steps, time the parts of each step (trunks, head forward/backward) separately\n"
             "(every variant but published)",
    )  # fmt: skip
    parser.add_argument("--out", help="also write the JSON lines to this file")
    parser.add_argument("--summarize", metavar="JSONL", help="only print the Markdown tables of an earlier --out file")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as rows:
            print(summary_table([json.loads(line) for line in rows if line.strip()]))
        return 0

    preset = PRESETS[args.preset]
    if preset.device == "cuda" and not torch.cuda.is_available():
        print(f"--preset {args.preset} needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    variants = args.variants.split(",") if args.variants else preset.variants
    unknown = [v for v in variants if v not in STEPS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(STEPS)}")
    shapes = [s for s in preset.shapes if not args.shapes or s.name in args.shapes.split(",")]
    if args.model:
        if not (Path(args.model) / "config.json").is_file():
            parser.error(f"--model {args.model}: no config.json there (eksft smollm2 DIR writes SmolLM2-135M-Instruct)")
        model = str(Path(args.model).resolve())
        shapes = [
            replace(
                s, model_dir=model, name=s.name if s.config is None else f"{Path(model).name}-{s.batch}x{s.seq_len}"
            )
            for s in shapes
        ]
    elif any(s.config is None for s in shapes):
        parser.error(f"--preset {args.preset} measures a pretrained model: give its directory with --model DIR "
                     "(e.g. `eksft smollm2 /tmp/smollm2` first)")  # fmt: skip
    steps = preset.steps if args.steps is None else args.steps
    warmup = preset.warmup if args.warmup is None else args.warmup
    if steps < 1:
        parser.error("--steps must be >= 1")

    if preset.device == "cpu":
        _fixed_mmap_threshold()
    started = time.perf_counter()
    rows = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115
    try:
        for shape in shapes:
            for variant in variants:
                row = measure(preset, shape, variant, steps, warmup, args.phases)
                row["preset"] = args.preset
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
    finally:
        if out:
            out.close()
    print()
    print(summary_table(rows))
    print(
        f"total {time.perf_counter() - started:.1f} s (--preset {args.preset}"
        f"{f' --model {args.model}' if args.model else ''}, {warmup} warm-up + {steps} timed steps; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__})"
    )
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
