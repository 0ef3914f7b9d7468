"""The vllm backend at full batch, without vLLM: a fake ``vllm`` module stands in for the engine and records what the
real runner (``evaluate``) and ``VLLMGenerator`` ask of it.

Pinned here: one ``LLM.generate`` call per chunk of pending samples; an interrupted run keeps its finished chunks and
resumes with the rest; the records are byte for byte those of the hf batch path; the engine options reach
``vllm.LLM``; grading a chunk overlaps the next chunk's generation without reordering the file.
"""

import json
import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest
import trl.scripts.utils  # noqa: F401  imported before the fake vllm module: TRL looks vLLM up on import

from eksft.errors import UserError
from eksft.evaluation import runner, sampling
from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec, Problem
from eksft.evaluation.generation import SamplingSettings, VLLMGenerator, make_generator
from eksft.evaluation.runner import EvalSettings, check_output, evaluate, read_samples, sample_seed

PROBLEMS = [Problem(i, f"What is {i} + {i + 2}?", str(2 * i + 2)) for i in range(3)]
GOLD = {p.problem: p.answer for p in PROBLEMS}
ALL_PAIRS = [(p.id, s) for p in PROBLEMS for s in range(5)]  # 3 problems x 5 samples, in the order they are drawn


def completion(prompt: str, seed: int) -> str:
    """The fake model: a text naming its seed, with the right boxed answer unless the seed is a multiple of 3."""
    return f"seed {seed}: " + (f"so \\boxed{{{GOLD[prompt]}}}" if seed % 3 else "no idea")


class FakeTokenizer:
    """Token ids are the prompt's UTF-8 bytes, so the fake engine can read the prompt back."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False  # the chat template already wrote any BOS
        return {"input_ids": [list(text.encode()) for text in texts]}


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class FakeLLM:
    """Records its constructor's keyword arguments and each ``generate`` call; raises KeyboardInterrupt in call
    number ``fail_on`` (1-based) as a Ctrl-C would; calls ``on_generate(call number)`` as each call starts."""

    created: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[int] = []  # requests per call
        self.lora_requests: list = []  # the lora_request of each call
        self.seeds: list[int] = []
        self.fail_on: int | None = None
        self.on_generate = None
        FakeLLM.created.append(self)

    def generate(self, requests, params, use_tqdm=True, lora_request=None):
        self.calls.append(len(requests))
        self.lora_requests.append(lora_request)
        if self.on_generate is not None:
            self.on_generate(len(self.calls))
        if self.fail_on == len(self.calls):
            raise KeyboardInterrupt
        assert len(requests) == len(params)
        self.seeds += [p.seed for p in params]
        prompts = [bytes(request["prompt_token_ids"]).decode() for request in requests]
        texts = [completion(prompt, p.seed) for prompt, p in zip(prompts, params, strict=True)]
        return [SimpleNamespace(outputs=[SimpleNamespace(text=text)]) for text in texts]


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    FakeLLM.created = []
    return module


def vllm_generator(**options) -> VLLMGenerator:
    return VLLMGenerator("/models/m", FakeTokenizer(), SamplingSettings(0.6, 0.95, 16), **options)


def settings(**overrides) -> EvalSettings:
    values = dict(model="/models/m", num_samples=5, ks=(1, 5), seed=7, backend="vllm", chunk_size=4)
    return EvalSettings(**{**values, **overrides})


def run(out, generate, **overrides) -> dict:
    benchmark = Benchmark(BenchmarkSpec("toy", "/data/toy.jsonl"), list(PROBLEMS))
    return evaluate([benchmark], generate, lambda problem: problem, settings(**overrides), out, progress=False)


def on_disk(out) -> list[tuple[int, int]]:
    return [(r["problem_id"], r["sample"]) for r in read_samples(out / "toy" / "samples.jsonl")]


def seeds_of(pairs) -> list[int]:
    return [sample_seed(7, pid, s) for pid, s in pairs]


@pytest.mark.parametrize(
    ("chunk_size", "calls"),
    [(4, [4, 4, 4, 3]), (5, [5, 5, 5]), (sampling.DEFAULT_CHUNK_SIZE, [15])],
    ids=["chunks-of-4", "chunks-of-5", "default-everything-at-once"],
)
def test_one_engine_call_per_chunk_of_pending_samples(tmp_path, chunk_size, calls):
    generator = vllm_generator()
    summary = run(tmp_path, generator.generate, chunk_size=chunk_size)
    assert generator.llm.calls == calls
    assert generator.llm.seeds == seeds_of(ALL_PAIRS)  # each pair's own seed, in the order drawn
    assert on_disk(tmp_path) == ALL_PAIRS
    assert summary["complete"] is True and summary["settings"]["chunk_size"] == chunk_size


def test_an_interrupted_run_keeps_its_finished_chunks_and_resumes_with_the_rest(tmp_path):
    first = vllm_generator()
    first.llm.fail_on = 2  # Ctrl-C while the second chunk generates: the first is being graded meanwhile
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", first.generate)
    assert first.llm.calls == [4, 4]
    assert on_disk(tmp_path / "cut") == ALL_PAIRS[:4]  # graded and written before the interrupt went on
    assert not (tmp_path / "cut" / "results.json").exists()

    second = vllm_generator()
    run(tmp_path / "cut", second.generate)
    assert second.llm.calls == [4, 4, 3]  # only the 11 missing pairs, again in chunks
    assert second.llm.seeds == seeds_of(ALL_PAIRS[4:])

    whole = vllm_generator()
    run(tmp_path / "whole", whole.generate)
    resumed, uninterrupted = ((tmp_path / d / "toy" / "samples.jsonl").read_bytes() for d in ("cut", "whole"))
    assert resumed == uninterrupted


def test_chunked_records_are_those_of_the_hf_batch_path(tmp_path, monkeypatch):
    """Same texts, seeds, answers and verdicts, in the same order, whatever the calls' sizes; hf keeps batch_size
    prompts per call and grades each batch in the calling thread before the next."""
    hf_calls, grading_threads = [], []
    grade = sampling.grade_and_extract

    def recording_grade(texts, golds, **kwargs):
        grading_threads.append(threading.current_thread().name)
        return grade(texts, golds, **kwargs)

    def hf_generate(prompts, seeds):
        hf_calls.append(len(prompts))
        return [completion(p, s) for p, s in zip(prompts, seeds, strict=True)]

    monkeypatch.setattr(sampling, "grade_and_extract", recording_grade)
    hf_summary = run(tmp_path / "hf", hf_generate, backend="hf", batch_size=2)
    assert hf_calls == [2] * 7 + [1] and set(grading_threads) == {threading.main_thread().name}

    grading_threads.clear()
    vllm_summary = run(tmp_path / "vllm", vllm_generator().generate)
    assert len(grading_threads) == 4 and all(name.startswith("eksft-grading") for name in grading_threads)

    hf_bytes, vllm_bytes = ((tmp_path / d / "toy" / "samples.jsonl").read_bytes() for d in ("hf", "vllm"))
    assert hf_bytes == vllm_bytes
    records = [json.loads(line) for line in vllm_bytes.decode().splitlines()]
    assert [(r["problem_id"], r["sample"]) for r in records] == ALL_PAIRS
    assert [r["text"] for r in records] == [completion(PROBLEMS[pid].problem, seed) for (pid, _), seed in
                                            zip(ALL_PAIRS, seeds_of(ALL_PAIRS), strict=True)]  # fmt: skip
    assert any(r["correct"] for r in records) and not all(r["correct"] for r in records)
    assert hf_summary["benchmarks"] == vllm_summary["benchmarks"]


def test_grading_overlaps_the_next_generation_and_keeps_the_order(tmp_path, monkeypatch):
    """Chunk 1's grading waits until chunk 2 is generating (it would wait forever if they ran one after the other)
    and then takes longer than chunk 2's generation: the file still holds chunk 1 before chunk 2."""
    generator = vllm_generator()
    second_started = threading.Event()
    generator.llm.on_generate = lambda call: second_started.set() if call == 2 else None
    grade, gradings = sampling.grade_and_extract, []

    def slow_first_grading(texts, golds, **kwargs):
        gradings.append(len(texts))
        if len(gradings) == 1:
            assert second_started.wait(timeout=20), "chunk 2 did not start generating while chunk 1 was graded"
            time.sleep(0.2)  # chunk 2's texts are ready before chunk 1 is written
        return grade(texts, golds, **kwargs)

    monkeypatch.setattr(sampling, "grade_and_extract", slow_first_grading)
    run(tmp_path, generator.generate)
    assert generator.llm.calls == [4, 4, 4, 3] and gradings == [4, 4, 4, 3]
    assert on_disk(tmp_path) == ALL_PAIRS


def test_a_failed_write_stops_the_run_and_leaves_no_partial_chunk(tmp_path, monkeypatch):
    def disk_full(fd, path, records):
        raise UserError(f"cannot append to {path}: No space left on device")

    monkeypatch.setattr(runner, "_append", disk_full)
    generator = vllm_generator()
    with pytest.raises(UserError, match="No space left"):
        run(tmp_path, generator.generate)
    assert generator.llm.calls in ([4], [4, 4])  # raised before or right after the second chunk's generation
    assert on_disk(tmp_path) == [] and not (tmp_path / "results.json").exists()


def test_engine_options_reach_vllm():
    make_generator("vllm", "/models/m", FakeTokenizer(), SamplingSettings(), dtype="bfloat16",
                   tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=4096)  # fmt: skip
    make_generator("vllm", "/models/m", FakeTokenizer(), SamplingSettings())
    chosen, default = (llm.kwargs for llm in FakeLLM.created)
    assert chosen == {"model": "/models/m", "dtype": "bfloat16", "tensor_parallel_size": 2,
                      "gpu_memory_utilization": 0.5, "max_model_len": 4096, "load_format": "safetensors",
                      "trust_remote_code": False}  # fmt: skip
    defaults = (default["tensor_parallel_size"], default["gpu_memory_utilization"], default["max_model_len"])
    assert defaults == (1, 0.9, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data_parallel_size": 2}, r"data_parallel_size=2: .* refuses data parallelism.*CUDA_VISIBLE_DEVICES"),
        ({"tensor_parallel_size": 0}, r"tensor_parallel_size must be an integer >= 1; got 0"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\]; got 1.5"),
        ({"max_model_len": 0}, r"max_model_len must be an integer >= 1"),
    ],
    ids=["data-parallel", "tensor-parallel-0", "memory-above-1", "max-model-len-0"],
)
def test_impossible_engine_options_are_refused_before_the_engine_starts(options, message):
    with pytest.raises(UserError, match=message):
        vllm_generator(**options)
    assert FakeLLM.created == []


def test_vllm_options_with_the_hf_backend_are_refused_before_loading():
    with pytest.raises(UserError, match=r"tensor_parallel_size=2: vLLM engine options, for backend vllm only"):
        make_generator("hf", "/models/does-not-exist", FakeTokenizer(), SamplingSettings(), tensor_parallel_size=2)


def test_a_chunk_size_below_1_is_refused(tmp_path):
    benchmark = Benchmark(BenchmarkSpec("toy", "/data/toy.jsonl"), list(PROBLEMS))
    with pytest.raises(UserError, match="chunk_size must be >= 1; got 0"):
        check_output([benchmark], settings(chunk_size=0), tmp_path)


def test_eval_command_hands_vllm_its_chunks_and_engine_options(tiny_model_dir, five_problems, tmp_path, monkeypatch,
                                                                capsys):  # fmt: skip
    """``eksft eval --backend vllm`` as a user types it: the chunk size and the engine options reach the engine, and
    the same options with the hf backend are refused before anything loads."""
    from eksft import cli
    from eksft.evaluation import generation

    class AnswersOne(FakeLLM):
        def generate(self, requests, params, use_tqdm=True, lora_request=None):
            self.calls.append(len(requests))
            return [SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{2}")]) for _ in requests]

    monkeypatch.setattr(sys.modules["vllm"], "LLM", AnswersOne)
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    out = tmp_path / "eval"
    engine = ["--tensor_parallel_size", "2", "--gpu-memory-utilization", "0.5", "--max_model_len", "512"]
    assert cli.main(["eval", "--model", tiny_model_dir, "--benchmark", five_problems, "--num-samples", "3",
                     "--backend", "vllm", "--chunk_size", "4", *engine, "--output_dir", str(out),
                     "--no_progress"]) == 0  # fmt: skip
    (llm,) = FakeLLM.created
    assert llm.calls == [4, 4, 4, 3]  # 5 problems x 3 samples in chunks of 4
    assert (llm.kwargs["tensor_parallel_size"], llm.kwargs["gpu_memory_utilization"], llm.kwargs["max_model_len"]) \
        == (2, 0.5, 512)  # fmt: skip
    assert json.loads((out / "results.json").read_text())["benchmarks"]["five"]["num_problems"] == 5
    capsys.readouterr()

    assert cli.main(["eval", "--model", tiny_model_dir, "--benchmark", five_problems, *engine,
                     "--output_dir", str(tmp_path / "hf")]) == 2  # fmt: skip
    assert "--tensor_parallel_size, --gpu_memory_utilization, --max_model_len: options of --backend vllm" \
        in capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "hf").exists()


def test_a_lora_adapter_runs_on_its_base_engine_with_vllm_lora(tmp_path):
    """An adapter folder: the engine is the base model's with LoRA enabled at the next rank vLLM allocates, and every
    call carries the adapter's LoRARequest."""
    base = tmp_path / "base"
    base.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 12}))
    generator = VLLMGenerator(str(adapter), FakeTokenizer(), SamplingSettings(0.6, 0.95, 16))
    (llm,) = FakeLLM.created
    assert llm.kwargs["model"] == str(base.absolute())
    assert (llm.kwargs["enable_lora"], llm.kwargs["max_lora_rank"], llm.kwargs["max_loras"]) == (True, 16, 1)
    generator.generate([PROBLEMS[0].problem] * 2, [1, 2])
    (request,) = llm.lora_requests
    assert (request.lora_path, request.lora_int_id) == (str(adapter), 1)
    plain = VLLMGenerator(str(base), FakeTokenizer(), SamplingSettings(0.6, 0.95, 16))
    assert "enable_lora" not in FakeLLM.created[-1].kwargs and plain.lora is None
