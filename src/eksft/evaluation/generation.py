"""Generation backends for evaluation: Hugging Face ``generate`` (CPU or GPU) and vLLM (when installed).

Both take fully formatted prompt texts (the chat template already applied) and a seed per prompt, and return one
completion text per prompt, in order, with special tokens removed (``<think>``/``</think>`` are ordinary added tokens
in Qwen3, so they stay and the grader can find the text after them).

Seeds: vLLM honours one seed per request, so each (problem, sample) pair is reproducible on its own. Hugging Face
``generate`` draws a whole batch from one generator, seeded with the batch's first seed: a rerun with the same
batches gives the same texts, but a resumed run (whose batches differ) does not repeat an interrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HFGenerator", "SamplingSettings", "VLLMGenerator", "make_generator", "vllm_available"]


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _dtype(name: str, cuda: bool):
    import torch

    if name == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class HFGenerator:
    """Batched sampling with ``model.generate``; prompts are left-padded so every row ends where generation starts."""

    def __init__(self, model_dir: str, tokenizer, settings: SamplingSettings, device: str | None = None,
                 dtype: str = "auto") -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(dtype, self.device.startswith("cuda")))
        self.model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(self, prompts: list[str], seeds: list[int]) -> list[str]:
        import torch

        self.tokenizer.padding_side = "left"
        # the chat template already wrote any BOS token into the text
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = self.settings.temperature > 0
        # top_k=0 switches off a top-k the model's generation_config may set (Qwen3 ships 20); vLLM uses none either
        sampling = {"temperature": self.settings.temperature, "top_p": self.settings.top_p, "top_k": 0} if sample else {}
        torch.manual_seed(seeds[0])
        with torch.inference_mode():
            output = self.model.generate(
                **batch, do_sample=sample, max_new_tokens=self.settings.max_new_tokens, pad_token_id=self.pad_id,
                **sampling,
            )  # fmt: skip
        new_tokens = output[:, batch["input_ids"].shape[1] :]  # [batch, generated]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


class VLLMGenerator:
    """The same outputs from vLLM; one request per prompt, each with its own seed."""

    def __init__(self, model_dir: str, tokenizer, settings: SamplingSettings, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9) -> None:  # fmt: skip
        from vllm import LLM

        self.llm = LLM(model=model_dir, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization)  # fmt: skip
        self.tokenizer = tokenizer
        self.settings = settings

    def generate(self, prompts: list[str], seeds: list[int]) -> list[str]:
        from vllm import SamplingParams

        params = [
            SamplingParams(temperature=self.settings.temperature, top_p=self.settings.top_p,
                           max_tokens=self.settings.max_new_tokens, seed=seed, skip_special_tokens=True)
            for seed in seeds
        ]  # fmt: skip
        # token ids, so that vLLM does not add a second BOS to a text whose template already has one
        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


def make_generator(backend: str, model_dir: str, tokenizer, settings: SamplingSettings, dtype: str = "auto"):
    if backend == "hf":
        return HFGenerator(model_dir, tokenizer, settings, dtype=dtype)
    if backend == "vllm":
        return VLLMGenerator(model_dir, tokenizer, settings, dtype=dtype)
    raise ValueError(f"unknown backend {backend!r}")
