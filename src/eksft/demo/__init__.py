"""The synthetic math world and the tiny tokenizer used by tests, CI and the offline demo.

``eksft.demo.world`` is pure Python; ``eksft.demo.tokenizer`` imports ``tokenizers`` and ``transformers``, so it is
not imported here.
"""

from .world import STYLES, Problem, Task, pretraining_corpus, prompt_dataset, sft_dataset

__all__ = ["STYLES", "Problem", "Task", "pretraining_corpus", "prompt_dataset", "sft_dataset"]
