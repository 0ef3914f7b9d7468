"""`eksft eval` end to end on the tiny model (CPU), and every bad input: exit 2, one message, nothing written."""

import json
import shutil

import pytest

from eksft import cli

from .conftest import write_jsonl


def eval_args(model, benchmark, out, *extra):
    return ["eval", "--model", model, "--benchmark", benchmark, "--num-samples", "2", "--k", "1,2",
            "--max-new-tokens", "8", "--batch-size", "4", "--output-dir", str(out), "--no-progress", *extra]  # fmt: skip


def test_eval_on_the_tiny_model_writes_samples_and_the_table(tiny_model_dir, five_problems, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(eval_args(tiny_model_dir, five_problems, out)) == 0
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert printed == table
    assert table.splitlines()[0] == "| model | five avg@2 | five pass@2 |"
    assert table.splitlines()[2].startswith("| tiny | ")
    samples = [json.loads(line) for line in (out / "five" / "samples.jsonl").read_text().splitlines()]
    assert sorted((s["problem_id"], s["sample"]) for s in samples) == [(p, s) for p in range(5) for s in range(2)]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["benchmarks"]["five"]["num_problems"] == 5
    assert results["benchmarks"]["five"]["prompt_template"].endswith("put your final answer within \\boxed{}.")
    assert results["settings"]["convention"] == results["benchmarks"]["five"]["convention"] == "eksft"

    # a rerun resumes: nothing left to generate, the same samples, a table again; --report combines runs
    assert cli.main(eval_args(tiny_model_dir, five_problems, out)) == 0
    assert len((out / "five" / "samples.jsonl").read_text().splitlines()) == 10
    capsys.readouterr()
    assert cli.main(["eval", "--report", str(out), str(out / "results.json")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7  # header, rule, two rows, blank, two notes


def test_limit_and_two_benchmarks(tiny_model_dir, five_problems, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "1 + 1?", "gold": 2}, {"question": "2 + 2?", "gold": 4}])
    out = tmp_path / "eval"
    args = eval_args(tiny_model_dir, five_problems, out, "--limit", "1", "--num-samples", "1", "--k", "1")
    assert cli.main([*args, "--benchmark", other, "--problem-field", "question", "--answer-field", "gold"]) == 2
    # --problem-field applies to every benchmark: five.jsonl has no 'question'; the message says so, nothing written
    assert not out.exists()
    args = eval_args(tiny_model_dir, other, out, "--limit", "1", "--num-samples", "1", "--k", "1",
                     "--problem-field", "question", "--answer-field", "gold")  # fmt: skip
    assert cli.main(args) == 0
    assert len((out / "other" / "samples.jsonl").read_text().splitlines()) == 1


@pytest.fixture
def broken_models(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_model_dir, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (no_tokenizer / name).unlink(missing_ok=True)
    return {"empty": str(empty), "no_tokenizer": str(no_tokenizer), "missing": str(tmp_path / "nowhere")}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_benchmark", "unknown benchmark 'aime2024'; known benchmarks: aime24, aime25, amc23, hmmt_feb25, math500"),
        ("missing_field", "no field 'answer'"),
        ("k_too_large", "k=8 is larger than --num-samples 2"),
        ("model_empty_dir", "is not a model directory: it has no config.json"),
        ("model_no_tokenizer", "cannot load its tokenizer"),
        ("model_missing", "no such directory"),
        ("bad_k", "--k must be comma-separated integers"),
        ("bad_template", "--prompt-template must contain {problem}"),
        ("no_model_flag", "--model is required"),
        ("vllm_missing", "vLLM is not installed"),
    ],
)
def test_bad_input_one_message_exit_2_output_untouched(case, expected, tiny_model_dir, five_problems, broken_models,
                                                        tmp_path, capsys):  # fmt: skip
    bad_file = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "gold": "2"}])
    out = tmp_path / "out"
    args = {
        "unknown_benchmark": eval_args(tiny_model_dir, "aime2024", out),
        "missing_field": eval_args(tiny_model_dir, bad_file, out),
        "k_too_large": eval_args(tiny_model_dir, five_problems, out, "--k", "1,8"),
        "model_empty_dir": eval_args(broken_models["empty"], five_problems, out),
        "model_no_tokenizer": eval_args(broken_models["no_tokenizer"], five_problems, out),
        "model_missing": eval_args(broken_models["missing"], five_problems, out),
        "bad_k": eval_args(tiny_model_dir, five_problems, out, "--k", "1,x"),
        "bad_template": eval_args(tiny_model_dir, five_problems, out, "--prompt-template", "Solve it."),
        "no_model_flag": ["eval", "--benchmark", five_problems, "--output-dir", str(out)],
        "vllm_missing": eval_args(tiny_model_dir, five_problems, out, "--backend", "vllm"),
    }[case]
    if case == "vllm_missing":  # the message only applies where vLLM is absent
        from eksft.evaluation.generation import vllm_available

        if vllm_available():
            pytest.skip("vLLM is installed here")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert expected in err
    if case == "missing_field":
        assert f"{bad_file}:2" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not out.exists()


def test_config_file_and_underscore_flags(tiny_model_dir, five_problems, tmp_path, capsys):
    """`eksft eval --config FILE`: the options of a YAML file (keys spelled either way), overridden by flags."""
    out = tmp_path / "eval"
    config = tmp_path / "eval.yaml"
    config.write_text(f"model: {tiny_model_dir}\nbenchmark: [{five_problems}]\nnum_samples: 2\nk: '1,2'\n"
                      f"max-new-tokens: 8\nbatch_size: 4\noutput_dir: {tmp_path / 'ignored'}\nno_progress: true\n"
                      "limit: 4\n")  # fmt: skip
    assert cli.main(["eval", "--config", str(config), "--output_dir", str(out), "--limit", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"]["five"]["num_problems"] == 2 and results["settings"]["max_new_tokens"] == 8
    assert not (tmp_path / "ignored").exists()  # the flag replaced the file's output_dir
    capsys.readouterr()

    for text, message in [("num_sample: 2\n", "unknown option 'num_sample' (did you mean num_samples?)"),
                          ("no_progress: 1\n", "no_progress is a flag: give true or false, got 1"),
                          ("- a\n- b\n", "a config file is a mapping of option names to values, got a list"),
                          ("k: [1\n", "cannot read the config file")]:  # fmt: skip
        config.write_text(text)
        assert cli.main(["eval", "--config", str(config), "--output-dir", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err, text
    assert cli.main(["eval", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_system_prompt_from_the_training_set(tiny_model_dir, five_problems, tmp_path, capsys):
    """`--system_prompt_from DATA`: the system turn the OpenR1-style rows share goes into every evaluation prompt
    (and into run.json); rows that disagree are refused before anything is sampled."""
    system = "Reason step by step, then box the answer."
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": f"{i} + 1?"}],
             "target": [{"role": "assistant", "content": f"\\boxed{{{i + 1}}}"}]} for i in range(3)]  # fmt: skip
    data = tmp_path / "openr1.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    common = ["eval", "--model", tiny_model_dir, "--benchmark", five_problems, "--max_new_tokens", "4", "--no_progress"]
    assert cli.main([*common, "--system_prompt_from", str(data), "--output_dir", str(out)]) == 0
    (run,) = out.glob("*/run.json")
    assert json.loads(run.read_text())["system_prompt"] == system
    assert f"system prompt from {data}: {system!r}" in capsys.readouterr().err

    rows[1]["prompt"][0]["content"] = "Another prompt."
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli.main([*common, "--system_prompt_from", str(data), "--output_dir", str(tmp_path / "bad")]) == 2
    assert "the rows do not share one system prompt (row 1: 'Reason step" in capsys.readouterr().err
    assert cli.main([*common, "--system_prompt_from", str(data), "--system_prompt", "x", "--output_dir",
                     str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "not both" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_results_reach_the_trackers_of_report_to(tiny_model_dir, five_problems, tmp_path, capsys):
    """`--report_to tensorboard`: one run whose scalars are the metrics of results.json, read back from the event
    files with TensorBoard's own reader; an unknown or missing tracker stops the command before any sampling."""
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra (make install)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "eval"
    common = ["eval", "--model", tiny_model_dir, "--benchmark", five_problems, "--num_samples", "2",
              "--max_new_tokens", "4", "--no_progress"]  # fmt: skip
    assert cli.main([*common, "--output_dir", str(out), "--report_to", "tensorboard", "--run_name", "tiny"]) == 0
    events = EventAccumulator(str(out / "tracking" / "eksft-eval"))  # the project; its hparams sit in a subfolder
    events.Reload()
    logged = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    results = json.loads((out / "results.json").read_text())
    expected = {f"five/{metric}": value for metric, value in results["benchmarks"]["five"]["metrics"].items()}
    expected |= {f"average/{metric}": value for metric, value in results["average"].items()}
    assert logged.keys() == expected.keys() and all(logged[k] == pytest.approx(v) for k, v in expected.items())
    capsys.readouterr()

    for tracker, message in [("wandbb", "unknown tracker; the trackers are: aim"), ("swanlab", "not installed")]:
        assert cli.main([*common, "--output_dir", str(tmp_path / tracker), "--report_to", tracker]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / tracker).exists()


def test_lighteval_convention_asks_and_grades_as_lighteval(tiny_model_dir, five_problems, tmp_path, capsys):
    """`--convention lighteval`: lighteval's prompt for the benchmark (a local file gets its AIME prompt) and its
    grading, both recorded in run.json; a rerun under the other convention is refused rather than mixed."""
    from eksft.evaluation.conventions import LIGHTEVAL_AIME_PROMPT

    out = tmp_path / "eval"
    common = ["eval", "--model", tiny_model_dir, "--benchmark", five_problems, "--max_new_tokens", "4", "--no_progress",
              "--output_dir", str(out)]  # fmt: skip
    assert cli.main([*common, "--convention", "lighteval"]) == 0
    run = json.loads((out / "five" / "run.json").read_text())
    assert (run["convention"], run["prompt_template"]) == ("lighteval", LIGHTEVAL_AIME_PROMPT)
    capsys.readouterr()
    assert cli.main(common) == 2  # the default convention, same directory
    assert "convention: 'lighteval' on disk, 'eksft' now" in capsys.readouterr().err
