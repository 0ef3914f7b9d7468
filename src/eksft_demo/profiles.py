"""The demo's sizes: the tiny base model (``BaseModelConfig``) and each profile of the run (``Profile``, ``PROFILES``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from eksft.errors import UserError

# Bump when the corpus recipe below changes: it is part of the cache key of the base model.
CORPUS_VERSION = 1
BASE_MODEL_FILE = "eksft_demo_base.json"  # written next to the weights: the config the model was built from
SFT_STYLE = "stepwise"
# Offsets keep the problem streams of the stages apart (sft_dataset already offsets its own seed by 1_000_003).


# ---- configuration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelConfig:
    """The base model and its pre-training: everything here goes into the cache key."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    pretrain_steps: int = 4000
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 5e-3
    warmup_steps: int = 20
    plain_problems: int = 2000  # each written once per solution style, as plain text
    chat_problems: int = 2000  # each written once, as a chat conversation in a random style
    boxed_chat_fraction: float = 0.4  # of the chat conversations, those whose answer is boxed
    seed: int = 0

    def key(self) -> str:
        """A short hash of the config and the corpus recipe version: the cache directory's name."""
        text = json.dumps({**asdict(self), "corpus_version": CORPUS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Profile:
    """Sizes of every stage. ``estimates`` are seconds per unit on a quiet 2-core CPU, used only for the ETA."""

    name: str
    base: BaseModelConfig
    objectives: tuple[str, ...] = ("nll", "eksft", "dft", "mask_only", "random_mask")
    # SFT (low data: a few examples, many epochs)
    sft_examples: int = 32
    sft_steps: int = 40
    sft_batch_size: int = 8
    sft_lr: float = 1e-3
    # GRPO
    grpo_prompts: int = 512
    grpo_steps: int = 30
    grpo_prompts_per_step: int = 4
    grpo_generations: int = 8
    grpo_lr: float = 2e-4
    grpo_max_completion: int = 112
    # evaluation
    eval_problems: int = 64
    eval_samples: int = 8
    eval_ks: tuple[int, ...] = (1, 4, 8)
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 128
    # analysis: held-out conversations for KL(model || base) and the entropy histograms
    shift_texts: int = 64
    estimates: dict = field(default_factory=dict, compare=False, hash=False)

    def validate(self) -> None:
        from eksft.objectives import OBJECTIVES

        unknown = [name for name in self.objectives if name not in OBJECTIVES]
        if unknown:
            raise UserError(f"profile {self.name}: unknown objective(s) {unknown}; known: {', '.join(OBJECTIVES)}")
        if not all(1 <= k <= self.eval_samples for k in self.eval_ks):
            raise UserError(f"profile {self.name}: every k of {self.eval_ks} must be in 1..{self.eval_samples}")


PROFILES: dict[str, Profile] = {
    # What CI runs: every stage and every objective at toy sizes (the numbers are not meant to say anything).
    "quick": Profile(
        name="quick",
        base=BaseModelConfig(pretrain_steps=250, plain_problems=1000, chat_problems=1000),
        sft_examples=16,
        sft_steps=8,
        sft_batch_size=4,
        grpo_prompts=64,
        grpo_steps=3,
        grpo_prompts_per_step=2,
        grpo_generations=4,
        grpo_max_completion=96,
        eval_problems=16,
        eval_samples=4,
        eval_ks=(1, 2, 4),
        eval_max_new_tokens=96,
        shift_texts=16,
        estimates={"pretrain_step": 0.05, "sft_step": 0.08, "grpo_step": 0.6, "eval_sample": 0.012,
                   "shift_text": 0.01, "model": 1.0},  # fmt: skip
    ),
    # What `make demo` runs: sized to finish well under 15 minutes on 2 CPU cores, the base model included.
    "full": Profile(
        name="full",
        base=BaseModelConfig(),
        grpo_steps=40,
        eval_problems=128,
        eval_samples=16,
        eval_ks=(1, 4, 16),
        estimates={"pretrain_step": 0.05, "sft_step": 0.06, "grpo_step": 0.6, "eval_sample": 0.007,
                   "shift_text": 0.01, "model": 1.0},  # fmt: skip
    ),
}
