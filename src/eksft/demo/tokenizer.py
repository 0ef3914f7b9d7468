"""A small byte-level BPE tokenizer trained offline on the math world, with a Qwen-style ChatML chat template.

Byte-level means every string encodes (characters never seen in training fall back to their UTF-8 bytes) and
decoding gives the text back exactly. Digits are split one by one, as in Qwen and Llama 3, so numbers are spelled
digit by digit.

The chat template wraps each assistant turn's content *and* its ``<|im_end|>`` in ``{% generation %}`` /
``{% endgeneration %}``, which is what ``apply_chat_template(..., return_assistant_tokens_mask=True)`` and TRL's
``SFTConfig(assistant_only_loss=True)`` need (TRL also checks that the end-of-turn token is inside the mask, so the
model learns to stop).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
DEFAULT_VOCAB_SIZE = 512

# ChatML as in Qwen: an optional system turn, then user/assistant turns. The assistant's end-of-turn token is inside
# the generation block; the newline after it is not (it belongs to the turn separator).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _default_corpus() -> list[str]:
    from .world import STYLES, Task, chat_messages, pretraining_corpus

    # the plain world text, plus the words the chat turns use (roles), so they get merges too
    extra = [f"{IM_START}{role}\n" for role in ("system", "user", "assistant")]
    extra += [chat_messages(p, STYLES[0])[0]["content"] for p in Task(7).problems("train", 50)]
    return pretraining_corpus(1000, seed=0) + extra


def train_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the raw ``tokenizers.Tokenizer`` (deterministic for a given corpus)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_default_corpus() if corpus is None else corpus), trainer=trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Wrap a raw tokenizer for transformers, with the special tokens and the chat template."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train on the world corpus (or ``corpus``) and wrap it: ready for ``save_pretrained``."""
    return wrap_tokenizer(train_tokenizer(corpus, vocab_size), model_max_length=model_max_length)
