"""The eval loop without a model: resume after interruptions generates nothing twice; results only when complete."""

import json
import os
import re

import pytest

from eksft.errors import UserError
from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec, Problem
from eksft.evaluation.metrics import pass_at_k
from eksft.evaluation.runner import (
    EvalSettings,
    check_output,
    evaluate,
    read_samples,
    sample_seed,
)

PROBLEMS = [Problem(i, f"What is {i} + {i + 2}?", str(2 * i + 2)) for i in range(4)]
GOLD = {p.problem: p.answer for p in PROBLEMS}


class Killed(Exception):
    """Stands for the process dying in the middle of a run."""


class FakeGenerator:
    """Answers correctly unless the seed is a multiple of 3; records every (prompt, seed) it generated for."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.generated: list[tuple[str, int]] = []

    def generate(self, prompts, seeds):
        if self.fail_after is not None and len(self.generated) + len(prompts) > self.fail_after:
            raise Killed
        self.generated += list(zip(prompts, seeds, strict=True))
        return [f"so \\boxed{{{GOLD[p]}}}" if s % 3 else "no idea" for p, s in zip(prompts, seeds, strict=True)]


def bench(problems=PROBLEMS):
    return Benchmark(BenchmarkSpec("toy", "/data/toy.jsonl"), list(problems))


def settings(**overrides):
    values = dict(model="/models/m", num_samples=3, ks=(1, 2, 3), batch_size=2, seed=7)
    return EvalSettings(**{**values, **overrides})


def run(out, generator, **overrides):
    return evaluate([bench()], generator.generate, lambda problem: problem, settings(**overrides), out, progress=False)


def expected_seeds(num_samples=3, seed=7):
    return sorted(sample_seed(seed, p.id, s) for p in PROBLEMS for s in range(num_samples))


def test_complete_run_writes_samples_and_correct_metrics(tmp_path):
    generator = FakeGenerator()
    summary = run(tmp_path, generator)
    lines = (tmp_path / "toy" / "samples.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(PROBLEMS) * 3 == len(generator.generated)
    assert set(records[0]) == {"problem_id", "sample", "text", "answer", "gold", "correct"}
    assert read_samples(tmp_path / "toy" / "samples.jsonl") == [{k: v for k, v in r.items() if k != "text"} for r in records]
    for record in records:
        assert record["correct"] == (sample_seed(7, record["problem_id"], record["sample"]) % 3 != 0)
        assert record["answer"] == (record["gold"] if record["correct"] else None)
    correct = {p.id: sum(r["correct"] for r in records if r["problem_id"] == p.id) for p in PROBLEMS}
    metrics = summary["benchmarks"]["toy"]["metrics"]
    assert set(metrics) == {"avg@3", "pass@1", "pass@2", "pass@3"}
    for k in (1, 2, 3):
        assert metrics[f"pass@{k}"] == pytest.approx(sum(pass_at_k(3, c, k) for c in correct.values()) / 4)
    assert metrics["avg@3"] == pytest.approx(sum(correct.values()) / 12)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["complete"] is True and on_disk["benchmarks"]["toy"]["metrics"] == metrics
    assert (tmp_path / "results.md").read_text().startswith("| model | toy avg@3 |")


def test_resume_after_interruption_generates_nothing_twice(tmp_path):
    first = FakeGenerator(fail_after=5)  # dies in its third batch of 2
    with pytest.raises(Killed):
        run(tmp_path, first)
    assert len(first.generated) == 4
    assert len(read_samples(tmp_path / "toy" / "samples.jsonl")) == 4  # every finished batch is on disk
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "results.md").exists()
    assert not (tmp_path / "toy" / "results.json").exists()

    second = FakeGenerator()
    run(tmp_path, second)
    assert len(second.generated) == len(PROBLEMS) * 3 - 4  # only the missing pairs
    seeds = [s for _, s in first.generated + second.generated]
    assert sorted(seeds) == expected_seeds()  # each (problem, sample) exactly once
    records = read_samples(tmp_path / "toy" / "samples.jsonl")
    assert sorted((r["problem_id"], r["sample"]) for r in records) == [(p.id, s) for p in PROBLEMS for s in range(3)]
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True

    third = FakeGenerator()  # a rerun of a finished run generates nothing and rewrites the same results
    run(tmp_path, third)
    assert third.generated == []


def test_truncated_last_line_is_ignored_and_regenerated_once(tmp_path):
    with pytest.raises(Killed):
        run(tmp_path, FakeGenerator(fail_after=4))
    samples = tmp_path / "toy" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    # a kill in the middle of writing the 4th line: half of it is on disk, without its newline
    samples.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    lost = json.loads(lines[3])

    generator = FakeGenerator()
    run(tmp_path, generator)
    assert len(generator.generated) == len(PROBLEMS) * 3 - 3
    assert sample_seed(7, lost["problem_id"], lost["sample"]) in {s for _, s in generator.generated}
    text = samples.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]  # every line is whole JSON again
    assert len(records) == len({(r["problem_id"], r["sample"]) for r in records}) == len(PROBLEMS) * 3


def test_more_samples_extend_a_finished_run_and_stale_results_go_first(tmp_path):
    run(tmp_path, FakeGenerator())
    assert (tmp_path / "results.json").exists()
    extension = FakeGenerator(fail_after=2)
    with pytest.raises(Killed):
        run(tmp_path, extension, num_samples=5, ks=(1, 5))
    # the old results described 3 samples; an unfinished 5-sample run must not leave them claiming completeness
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "toy" / "results.json").exists()
    generator = FakeGenerator()
    summary = run(tmp_path, generator, num_samples=5, ks=(1, 5))
    assert len(extension.generated) + len(generator.generated) == len(PROBLEMS) * 2
    assert set(summary["benchmarks"]["toy"]["metrics"]) == {"avg@5", "pass@1", "pass@5"}


def test_other_sampling_settings_refuse_to_mix(tmp_path):
    run(tmp_path, FakeGenerator())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="temperature: 0.6 on disk, 1.0 now"):
        run(tmp_path, FakeGenerator(), temperature=1.0)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_k_above_num_samples_and_duplicate_names_are_refused(tmp_path):
    with pytest.raises(UserError, match="k=8 needs at least 8 samples"):
        check_output([bench()], settings(ks=(1, 8)), tmp_path / "out")
    with pytest.raises(UserError, match="share a name"):
        check_output([bench(), bench()], settings(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_damaged_line_inside_the_file_is_an_error_naming_it(tmp_path):
    run(tmp_path, FakeGenerator())
    samples = tmp_path / "toy" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:2]) + "garbage\n" + "".join(lines[2:]))
    with pytest.raises(UserError, match=r"samples.jsonl:3: not a sample record"):
        run(tmp_path, FakeGenerator())


def test_a_changed_benchmark_is_not_mixed_with_old_samples(tmp_path):
    with pytest.raises(Killed):
        run(tmp_path, FakeGenerator(fail_after=4))
    changed = [Problem(0, PROBLEMS[0].problem, "999"), *PROBLEMS[1:]]
    with pytest.raises(UserError, match="problem 0 has gold answer '2' on disk but '999'"):
        evaluate([bench(changed)], FakeGenerator().generate, lambda p: p, settings(), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda lines: lines + ["garbage\n"], r"samples.jsonl:13: not a sample record \(invalid JSON"),
        (lambda lines: lines[:5] + [lines[3]] + lines[5:], r"samples.jsonl:6: problem 1 sample 0 is already on line 4"),
        (lambda lines: [lines[0].replace('"sample": 0', '"sample": "0"')] + lines[1:],
         r"samples.jsonl:1: field 'sample' must be an integer >= 0, got '0'"),
        (lambda lines: [re.sub(r'"correct": \w+', '"correct": 1', lines[0])] + lines[1:],
         r"samples.jsonl:1: field 'correct' must be true or false, got 1"),
        (lambda lines: lines[:2] + [lines[2][:20] + "\n"] + lines[3:], r"samples.jsonl:3: not a sample record \(invalid JSON"),
        (lambda lines: lines[:2] + ["\udcff\n"] + lines[2:], r"samples.jsonl:3: not a sample record \(not UTF-8 text"),
    ],
    ids=["whole-bad-last-line", "duplicate", "sample-type", "correct-type", "cut-line-inside", "not-utf8"],
)
def test_damage_a_kill_cannot_cause_is_an_error_and_changes_nothing(tmp_path, damage, message):
    """Only bytes after the last newline come from a kill; anything else that is wrong is reported, not skipped."""
    run(tmp_path, FakeGenerator())
    samples = tmp_path / "toy" / "samples.jsonl"
    samples.write_text("".join(damage(samples.read_text().splitlines(keepends=True))), errors="surrogateescape")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=message):
        run(tmp_path, FakeGenerator())
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_an_output_dir_without_write_permission_is_refused_before_anything_is_drawn(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    generator = FakeGenerator()
    with pytest.raises(UserError, match=r"locked is not writable \(permission denied\)"):
        run(locked / "out", generator)
    assert generator.generated == [] and list(locked.iterdir()) == []
