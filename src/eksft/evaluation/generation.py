"""Generation backends for evaluation: Hugging Face ``generate`` (CPU or GPU) and vLLM (when installed).

Both take fully formatted prompt texts (the chat template already applied) and a seed per prompt, and return one
completion text per prompt, in order, with special tokens removed (``<think>``/``</think>`` are ordinary added tokens
in Qwen3, so they stay and the grader can find the text after them).

Seeds: each (problem, sample) pair gets its own seed, and its text depends only on that seed, not on which other
samples shared its batch, so a resumed run repeats exactly what an uninterrupted one would have drawn. vLLM honours
one seed per request. Hugging Face ``generate`` draws a whole batch from the global generator, so the final draw is
done here instead, one generator per row (see ``PerSampleSampler``). What can still differ is floating point: a
batch of another shape can change a logit in its last bits, which in float32 practically never moves a draw, and in
bfloat16 on a GPU rarely does.

Call sizes: the runner hands the hf backend ``batch_size`` prompts per call and vLLM thousands (``chunk_size``, see
``eksft.evaluation.sampling``): vLLM schedules the requests of one call itself and is fastest with all of them.

Weights are read from safetensors files only, and a model's own Python code runs only when asked for
(``trust_remote_code``): a pickle (``pytorch_model.bin``) or remote code can run anything when loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters import adapter_base, adapter_rank, is_adapter_dir, load_merged_model

__all__ = [
    "VLLM_DEFAULTS", "HFGenerator", "PerSampleSampler", "SamplingSettings", "VLLMGenerator", "changed_engine_options",
    "check_vllm_options",
    "make_generator", "vllm_available",
]  # fmt: skip


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


class PerSampleSampler:
    """A logits processor that samples each row's next token with that row's own generator.

    It applies the temperature and top-p (as transformers' warpers do: the smallest set of most likely tokens whose
    mass reaches ``top_p``), draws one uniform number per row from a CPU generator seeded with the row's seed, picks
    the token by inverse CDF, and returns scores that leave only that token possible. ``generate`` runs it with
    ``do_sample=True`` and neutral warpers, so its own batch-wide draw has a single choice per row.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        ordered, order = (scores.float() / self.temperature).sort(dim=-1)  # [B, V], most likely token last
        probs = ordered.softmax(dim=-1)
        if self.top_p < 1.0:  # the last token always stays: its cumulative mass is 1 > 1 - top_p
            probs = probs.masked_fill(probs.cumsum(dim=-1) <= 1.0 - self.top_p, 0.0)
        cdf = probs.cumsum(dim=-1)
        uniform = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(scores.device)  # [B]
        # the first token whose cdf exceeds u * mass; rounding past the end falls on the most likely token
        pick = torch.searchsorted(cdf, uniform.unsqueeze(-1) * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
        tokens = order.gather(-1, pick)  # [B, 1]
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


class HFGenerator:
    """Batched sampling with ``model.generate``; prompts are left-padded so every row ends where generation starts."""

    def __init__(self, model_dir: str, tokenizer, settings: SamplingSettings, device: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False) -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _dtype(dtype, self.device.startswith("cuda"))
        if is_adapter_dir(model_dir):  # base + LoRA adapter, merged in memory: generation at the full model's speed
            self.model = load_merged_model(model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            )  # fmt: skip
        self.model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _sampling(self, seeds: list[int]) -> dict:
        """``generate`` arguments: greedy at temperature 0, else per-row draws (top_k=0 switches off a top-k the
        model's generation_config may set: Qwen3 ships 20, and vLLM uses none)."""
        from transformers import LogitsProcessorList

        if self.settings.temperature == 0:
            return {"do_sample": False}
        sampler = PerSampleSampler(seeds, self.settings.temperature, self.settings.top_p)
        return {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                "logits_processor": LogitsProcessorList([sampler])}  # fmt: skip

    def generate(self, prompts: list[str], seeds: list[int]) -> list[str]:
        import torch

        self.tokenizer.padding_side = "left"
        # the chat template already wrote any BOS token into the text
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **batch, max_new_tokens=self.settings.max_new_tokens, pad_token_id=self.pad_id, **self._sampling(seeds)
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]  # [batch, generated]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def check_vllm_options(tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                       gpu_memory_utilization: float = 0.9, max_model_len: int | None = None) -> None:  # fmt: skip
    """Refuse vLLM engine options that cannot work, before anything is loaded (the command line can call it first).

    Data parallelism is refused above 1: vLLM's offline ``LLM`` drives one engine from one process, and since vLLM
    0.11.1 its constructor raises on ``data_parallel_size > 1`` ("not supported for single-process usage and may
    hang"; older versions accepted the argument and could hang). The equivalent is one engine per GPU group, each in
    its own process; see the message below.
    """
    from ..errors import UserError

    if type(tensor_parallel_size) is not int or tensor_parallel_size < 1:
        raise UserError(f"tensor_parallel_size must be an integer >= 1; got {tensor_parallel_size!r}")
    if type(data_parallel_size) is not int or data_parallel_size < 1:
        raise UserError(f"data_parallel_size must be an integer >= 1; got {data_parallel_size!r}")
    if data_parallel_size > 1:
        raise UserError(
            f"data_parallel_size={data_parallel_size}: vLLM's offline engine (LLM) runs in one process and refuses "
            "data parallelism. Its equivalent: one eksft eval per GPU (CUDA_VISIBLE_DEVICES=0 eksft eval ..., "
            "CUDA_VISIBLE_DEVICES=1 eksft eval ...), each with its own benchmarks and --output-dir, then one table "
            "with eksft eval --report DIR1 DIR2; or spread one engine over the GPUs with tensor_parallel_size"
        )  # fmt: skip
    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"gpu_memory_utilization must be in (0, 1]; got {gpu_memory_utilization!r}")
    if max_model_len is not None and (type(max_model_len) is not int or max_model_len < 1):
        raise UserError(f"max_model_len must be an integer >= 1 (or None: the model's own); got {max_model_len!r}")


class VLLMGenerator:
    """The same outputs from vLLM; one request per prompt, each with its own seed.

    Engine options, passed to ``vllm.LLM``: ``tensor_parallel_size`` (GPUs one engine is split over),
    ``gpu_memory_utilization`` (the share of each GPU's memory vLLM takes for weights and KV cache; lower it when
    something else shares the GPU) and ``max_model_len`` (the context, prompt plus completion, that the engine
    reserves KV cache for; None takes the model's, which for a model whose config claims a long context can leave
    too little memory: lower it to prompt length + ``max_new_tokens``). ``data_parallel_size`` above 1 is refused,
    see :func:`check_vllm_options`. ``use_tqdm`` shows vLLM's own progress bar inside each call: the runner's bar
    advances once per call, and a call is thousands of requests.

    ``generate`` takes any number of prompts; the runner gives it thousands at once (``EvalSettings.chunk_size``),
    which vLLM schedules itself. A LoRA adapter folder (``eksft.adapters``) runs on its base model's engine with vLLM's
    LoRA support, the adapter applied to every request; an adapter vLLM cannot serve (say, one that also trains full
    modules) is an error from vLLM: merge it first (``eksft merge``).
    """

    def __init__(self, model_dir: str, tokenizer, settings: SamplingSettings, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 *, data_parallel_size: int = 1, max_model_len: int | None = None,
                 use_tqdm: bool = False) -> None:  # fmt: skip
        check_vllm_options(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len)
        from vllm import LLM

        self.lora, lora_options = None, {}
        if is_adapter_dir(model_dir):  # vLLM's LoRA: the base model's engine, the adapter applied to every request
            from vllm.lora.request import LoRARequest

            rank = adapter_rank(model_dir)
            lora_options = {"enable_lora": True, "max_loras": 1,
                            "max_lora_rank": next((r for r in VLLM_LORA_RANKS if r >= rank), rank)}  # fmt: skip
            self.lora = LoRARequest("eksft-adapter", 1, str(model_dir))
            model_dir = adapter_base(model_dir)
        self.llm = LLM(model=model_dir, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       load_format="safetensors", trust_remote_code=trust_remote_code, **lora_options)  # fmt: skip
        self.tokenizer = tokenizer
        self.settings = settings
        self.use_tqdm = use_tqdm

    def requests(self, prompts: list[str], seeds: list[int]) -> tuple[list[dict], list]:
        """What ``generate`` hands the engine: one request per prompt, as token ids without special tokens (the chat
        template already wrote any BOS, and vLLM would add a second one to a text; a prompt repeated for its samples
        is tokenized once), and one ``SamplingParams`` per request with its seed."""
        from vllm import SamplingParams

        unique = list(dict.fromkeys(prompts))
        ids = dict(zip(unique, self.tokenizer(unique, add_special_tokens=False)["input_ids"], strict=True))
        params = [
            SamplingParams(temperature=self.settings.temperature, top_p=self.settings.top_p,
                           max_tokens=self.settings.max_new_tokens, seed=seed, skip_special_tokens=True)
            for seed in seeds
        ]  # fmt: skip
        return [{"prompt_token_ids": ids[prompt]} for prompt in prompts], params

    def generate(self, prompts: list[str], seeds: list[int]) -> list[str]:
        requests, params = self.requests(prompts, seeds)
        outputs = self.llm.generate(requests, params, use_tqdm=self.use_tqdm,
                                    lora_request=self.lora)  # in the order of the requests
        return [output.outputs[0].text for output in outputs]


# the ranks vLLM's LoRA support allocates for (vllm.config.LoRAConfig): an adapter of rank r gets the next one up
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

VLLM_DEFAULTS = {"tensor_parallel_size": 1, "data_parallel_size": 1, "gpu_memory_utilization": 0.9,
                 "max_model_len": None}  # fmt: skip


def changed_engine_options(options: dict) -> list[str]:
    """The names of the vLLM engine options in ``options`` that differ from their defaults (``VLLM_DEFAULTS``)."""
    return [key for key, value in options.items() if value != VLLM_DEFAULTS[key]]


def make_generator(backend: str, model_dir: str, tokenizer, settings: SamplingSettings, dtype: str = "auto",
                   trust_remote_code: bool = False, *, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                   gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                   use_tqdm: bool = False):  # fmt: skip
    """The backend's generator. The vLLM engine options (see :class:`VLLMGenerator`) must keep their defaults with
    the hf backend: an option meant for vLLM is refused rather than silently ignored."""
    from ..errors import UserError

    options = {"tensor_parallel_size": tensor_parallel_size, "data_parallel_size": data_parallel_size,
               "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len}  # fmt: skip
    if backend == "hf":
        changed = [f"{key}={options[key]!r}" for key in changed_engine_options(options)]
        if changed:
            raise UserError(f"{', '.join(changed)}: vLLM engine options, for backend vllm only (backend is hf)")
        return HFGenerator(model_dir, tokenizer, settings, dtype=dtype, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        return VLLMGenerator(model_dir, tokenizer, settings, dtype=dtype, trust_remote_code=trust_remote_code,
                             use_tqdm=use_tqdm, **options)  # fmt: skip
    raise ValueError(f"unknown backend {backend!r}")
