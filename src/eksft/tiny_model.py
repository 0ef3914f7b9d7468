"""A tiny Qwen3-architecture causal LM and its tokenizer, built offline, for tests, CI and the offline demo.

``build_tiny_model(out_dir)`` writes a randomly initialised model (or, with ``pretrain_steps=N``, one pre-trained for
N AdamW steps on the math world, a weak "base model" of that world) in Hugging Face format, so that
``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)`` work offline.

The directory is written atomically: everything is built in a hidden temporary sibling (``.NAME.tmp-*``) that is
renamed to ``out_dir`` only at the end, so an interrupted build never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .demo.tokenizer import IM_END, build_tokenizer
from .demo.world import pretraining_corpus
from .errors import UserError
from .files import fresh_sibling, replace_directory

METADATA_FILE = "eksft_tiny_model.json"


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512
    vocab_size: int = 512  # target size for the tokenizer's BPE training

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, bool) and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.vocab_size < 300:
            raise UserError(f"vocab_size must be at least 300 (256 bytes + specials + merges), got {self.vocab_size}")


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 0
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    corpus_problems: int = 2000  # training problems of the world; each appears once per solution style
    # Intra-op threads while training. A model this small gains nothing from more, and on a busy 2-core machine
    # two OpenMP threads were measured >10x slower than one. None keeps torch's setting.
    num_threads: int | None = 1


@dataclass
class TinyModelResult:
    path: Path
    num_parameters: int
    vocab_size: int
    losses: list[float] = field(default_factory=list)


def make_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec, seed: int = 0) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 model sized by ``spec``, with ids taken from ``tokenizer``."""
    eos_id = tokenizer.eos_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        max_window_layers=spec.num_layers,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    # A chat turn ends with <|im_end|>, plain text with <|endoftext|>: generation stops at either.
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), eos_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return model


def corpus_tokens(
    tokenizer: PreTrainedTokenizerFast, n_problems: int, seed: int = 0, documents: Sequence[str] | None = None
) -> torch.Tensor:
    """The world's pre-training corpus (or ``documents`` when given) as one stream of token ids, each document
    followed by ``<|endoftext|>``."""
    ids: list[int] = []
    docs = pretraining_corpus(n_problems, seed=seed) if documents is None else list(documents)
    for doc in tokenizer(docs)["input_ids"]:
        ids.extend(doc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def sample_batch(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` random windows of ``seq_len`` tokens from ``stream``."""
    if len(stream) <= seq_len:
        raise UserError(f"the pre-training corpus has {len(stream)} tokens, fewer than seq_len={seq_len}")
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def eval_loss(model: Qwen3ForCausalLM, batch: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    loss = model(input_ids=batch, labels=batch).loss.item()
    model.train(was_training)
    return loss


def pretrain(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    config: PretrainConfig,
    seed: int = 0,
    progress: bool = True,
    documents: Sequence[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Plain-torch causal-LM pre-training on the world corpus; returns the training loss of every step.

    ``documents`` replaces the world corpus (``pretraining_corpus``); ``on_step(step, loss)`` is called after every
    optimizer step (step counted from 1), e.g. to report progress.
    """
    if config.steps <= 0:
        return []
    stream = corpus_tokens(tokenizer, config.corpus_problems, seed=seed, documents=documents)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    model.train()
    losses: list[float] = []
    try:
        bar = tqdm(range(config.steps), desc="pre-training tiny model", disable=not progress, leave=False)
        for _ in bar:
            batch = sample_batch(stream, config.batch_size, config.seq_len, generator)
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(len(losses), losses[-1])
    finally:
        torch.set_num_threads(previous_threads)
        model.eval()
    return losses


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir} exists and is not a directory; choose another output path")
        if any(out_dir.iterdir()) and not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")


def _write_model(directory: Path, model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, meta: dict) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    pretrain_steps: int = 0,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 512,
    vocab_size: int = 512,
    overwrite: bool = False,
    pretrain_config: PretrainConfig | None = None,
    progress: bool = True,
    documents: Sequence[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TinyModelResult:
    """Write the tiny model and its tokenizer to ``out_dir`` (see the module docstring); returns what was built.

    ``pretrain_config`` sets the pre-training details; its ``steps`` is replaced by ``pretrain_steps``.
    ``documents`` replaces the world's pre-training corpus and ``on_step(step, loss)`` is called after every
    pre-training step (see :func:`pretrain`).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    spec = TinyModelSpec(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        tie_word_embeddings=bool(tie_word_embeddings),
        max_position_embeddings=max_position_embeddings,
        vocab_size=vocab_size,
    )
    spec.validate()
    if not isinstance(pretrain_steps, int) or pretrain_steps < 0:
        raise UserError(f"pretrain_steps must be a non-negative integer, got {pretrain_steps!r}")
    train_config = PretrainConfig(**{**asdict(pretrain_config or PretrainConfig()), "steps": pretrain_steps})
    if train_config.seq_len > max_position_embeddings:
        raise UserError(f"seq_len {train_config.seq_len} exceeds max_position_embeddings {max_position_embeddings}")
    _check_target(out_dir, overwrite)  # fail before spending time on training
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    tmp = fresh_sibling(out_dir, "tmp")
    try:
        tokenizer = build_tokenizer(vocab_size=spec.vocab_size, model_max_length=spec.max_position_embeddings)
        model = make_model(tokenizer, spec, seed=seed)
        losses = pretrain(model, tokenizer, train_config, seed=seed, progress=progress, documents=documents,
                          on_step=on_step)  # fmt: skip
        meta = {
            "spec": asdict(spec),
            "pretrain": asdict(train_config),
            "corpus": "world" if documents is None else f"custom ({len(documents)} documents)",
            "seed": seed,
            "num_parameters": model.num_parameters(),
            "final_loss": losses[-1] if losses else None,
        }
        _write_model(tmp, model, tokenizer, meta)
        _check_target(out_dir, overwrite)  # something may have appeared there meanwhile
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TinyModelResult(out_dir, model.num_parameters(), len(tokenizer), losses)

