"""`eksft analyze` end to end on two tiny models, and bad input: exit 2, a clear message, no output left behind."""

import json

import pytest
from transformers import Qwen3Config, Qwen3ForCausalLM

from eksft import cli
from eksft.analysis.drift import parameter_drift
from eksft.demo.world import STYLES, Task, format_document

from .conftest import write_token_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_eval_dir(path, correct_by_problem):
    """The layout `eksft eval` leaves: <benchmark>/samples.jsonl and, once finished, <benchmark>/results.json."""
    bench = path / "demo"
    bench.mkdir(parents=True)
    lines = [json.dumps({"problem_id": pid, "sample": s, "text": "...", "answer": None, "gold": "1", "correct": ok})
             for pid, samples in correct_by_problem.items() for s, ok in enumerate(samples)]  # fmt: skip
    (bench / "samples.jsonl").write_text("\n".join(lines) + "\n")
    n = len(next(iter(correct_by_problem.values())))
    (bench / "results.json").write_text(json.dumps({"num_samples": n, "metrics": {}}))
    return path


def run(argv, capsys):
    code = cli.main(["analyze", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_end_to_end(tmp_path, base_dir, perturbed_dir, capsys):
    perturbed = perturbed_dir[0]
    run_dir = write_token_stats(tmp_path / "sft-run", steps=6)
    eval_dir = write_eval_dir(tmp_path / "ev", {0: [True, False, False, False], 1: [False, False, True, True]})
    out = tmp_path / "out"
    texts = tmp_path / "texts.jsonl"  # six held-out problems of the demo world, as documents (docs/analysis.md)
    problems = Task(0).problems("test", 6)
    texts.write_text("".join(json.dumps({"text": format_document(p, STYLES[i % len(STYLES)])}) + "\n"
                             for i, p in enumerate(problems)))  # fmt: skip
    code, stdout, stderr = run(["--base", str(base_dir), "--model", f"perturbed={perturbed}", "--model", str(base_dir),
                                "--run-dir", str(run_dir), "--eval-dir", f"sft={eval_dir}", "--texts", str(texts),
                                "--batch-size", "3", "--output-dir", str(out), "--no-progress", "--device", "cpu"],
                               capsys)  # fmt: skip
    assert code == 0, stderr
    assert "[1/2] perturbed: parameter drift" in stdout and f"wrote {out / 'analysis.md'}" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json", "analysis.md", "drift_per_layer.png", "pass_at_k_demo.png", "token_histograms.png",
        "training_curves.png",
    ]  # fmt: skip
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".out.*"))  # no temporary sibling left

    result = json.loads((out / "analysis.json").read_text())
    by_label = {m["label"]: m for m in result["models"]}
    assert by_label["perturbed"]["drift"]["total"] == pytest.approx(parameter_drift(perturbed, base_dir).relative)
    assert by_label["perturbed"]["shift"]["mean_kl"] > 0
    assert by_label["base"]["drift"]["total"] == 0
    assert by_label["base"]["shift"]["mean_kl"] == pytest.approx(0, abs=1e-6)
    assert result["runs"][0]["num_steps"] == 6
    assert result["runs"][0]["token_sets"]["iou"]["last"] == pytest.approx(0.52)
    assert result["evals"][0]["pass_at_k"]["demo"][0] == [1, pytest.approx(0.375)]
    assert result["texts"]["num_texts"] == 6

    markdown = (out / "analysis.md").read_text()
    for heading in ("## Drift and distribution shift", "## Drift per parameter group",
                    "## Entropy / KL token sets over training", "## pass@k", "![training curves](training_curves.png)"):
        assert heading in markdown  # fmt: skip

    # a rerun needs --overwrite, and then replaces the directory whole
    code, _, stderr = run(["--run-dir", str(run_dir), "--output-dir", str(out)], capsys)
    assert code == 2 and "exists and is not empty; pass --overwrite" in stderr
    code, _, stderr = run(["--run-dir", str(run_dir), "--output-dir", str(out), "--overwrite"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "analysis.md", "training_curves.png"]


def test_texts_file_and_drift_only(tmp_path, base_dir, perturbed_dir, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "Question: What is 2 + 3?\nAnswer: 5"}) + "\n"
                     + json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello there."}]}) + "\n")  # fmt: skip
    code, _, stderr = run(["--base", str(base_dir), "--model", str(perturbed_dir[0]), "--texts", str(texts),
                           "--output-dir", str(tmp_path / "a"), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, stderr
    shift = json.loads((tmp_path / "a" / "analysis.json").read_text())["models"][0]["shift"]
    assert shift["num_tokens"] > 10 and shift["mean_kl"] > 0

    code, stdout, stderr = run(["--base", str(base_dir), "--model", str(perturbed_dir[0]),
                                "--output-dir", str(tmp_path / "b")], capsys)  # fmt: skip
    assert code == 0, stderr
    assert "drift only" in stdout
    result = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert "shift" not in result["models"][0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["analysis.json", "analysis.md", "drift_per_layer.png"]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, base_dir, capsys):
    out = tmp_path / "out"
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("hello")
    other = tmp_path / "other-architecture"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16)).save_pretrained(other)  # fmt: skip
    bad_texts = tmp_path / "bad.jsonl"
    bad_texts.write_text('{"prompt": "no text field"}\n')
    cases = [
        (["--base", str(base_dir), "--model", str(tmp_path / "missing")], "missing: no such file or directory"),
        (["--base", str(base_dir), "--model", str(not_a_model)], "is not a Hugging Face model directory"),
        (["--base", str(tmp_path / "nope"), "--model", str(base_dir)], "nope: no such file or directory"),
        (["--base", str(base_dir), "--model", str(other)], "different parameters"),
        (["--model", str(base_dir)], "--model needs --base"),
        (["--run-dir", str(not_a_model)], "has no token_stats.jsonl"),
        (["--base", str(base_dir), "--model", str(base_dir), "--texts", str(bad_texts)], "no field 'text' or 'messages'"),
        (["--texts", str(bad_texts), "--eval-dir", str(tmp_path)], "--texts measures the shift of a --model"),
        ([], "nothing to analyze"),
    ]
    for argv, message in cases:
        code, _, stderr = run([*argv, "--output-dir", str(out), "--no-progress"], capsys)
        assert code == 2, (argv, stderr)
        assert message in stderr, (argv, stderr)
        assert "Traceback" not in stderr
        assert not out.exists() and not list(tmp_path.glob(".out.*")), argv
    assert cli.main(["analyze", "--help"]) == 0
    assert cli.main(["analyze", "--bogus"]) == 2
