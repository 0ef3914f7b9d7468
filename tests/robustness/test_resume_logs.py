"""SIGKILL, then resume, as a user restarts a preempted job: `eksft sft` / `eksft grpo` killed at several points, then
the same command with ``--resume_from_checkpoint last``, against one uninterrupted run of the same command.

What must hold: the final model files equal the uninterrupted run's byte for byte, and the per-step log
(``token_stats.jsonl``, ``grpo_log.jsonl``) holds each step once, line for line the uninterrupted run's. The command
runs in a forked child (torch already imported: fast) that pauses at the kill point and is killed there; the resume
runs in this process, like a fresh start of the command.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from eksft import cli, grpo
from eksft.trainer import checkpoints as checkpoints_module
from eksft.trainer import step_log
from eksft.trainer.safety import SafeTraining

from .test_training_faults import ROOT, conversation, hidden_dirs, kill_while_paused, variety

SFT_LOG, GRPO_LOG = "token_stats.jsonl", "grpo_log.jsonl"
TIME_FIELDS = ("step_time",)  # GRPO: wall-clock seconds of the step


def sft_command(model: str, tmp_path: Path, out: Path) -> list[str]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": conversation(i)}) + "\n" for i in range(16)))
    return ["sft", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--model_name_or_path", model,
            "--dataset_name", str(data), "--output_dir", str(out), "--per_device_train_batch_size", "2",
            "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2",
            "--disable_tqdm", "true"]  # fmt: skip


def grpo_command(model: str, tmp_path: Path, out: Path) -> list[str]:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(8)))  # fmt: skip
    return ["grpo", "--config", str(ROOT / "configs" / "grpo_tiny_cpu.yaml"), "--model_name_or_path", model,
            "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "5", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "12", "--reward_funcs", "variety",
            "--reward_weights", "1.0", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1",
            "--disable_tqdm", "true"]  # fmt: skip


# ---- where the child stops: each installs a patch (in the child only) that calls pause() at its point ----------


def after_log_of(step: int):
    def install(pause):
        log = SafeTraining.log

        def logged(self, logs, start_time=None):
            log(self, logs, start_time)
            if self.state.global_step == step and "loss" in logs:
                pause()

        SafeTraining.log = logged

    return install


def in_append_of(step: int):
    """Half of step ``step``'s log line written: the torn last line of a writer killed mid-append."""

    def install(pause):
        def torn(path, record):
            if record.get("step") == step:
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record)[:40])
                pause()
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

        step_log.append = torn

    return install


def in_save_of(step: int):
    """Checkpoint ``step`` staged (weights, optimizer, trainer state), not yet renamed into place."""

    def install(pause):
        publish = checkpoints_module.publish_checkpoint

        def paused(staged, final):
            if final.endswith(f"checkpoint-{step}"):
                pause()
            publish(staged, final)

        checkpoints_module.publish_checkpoint = paused

    return install


def run_until_killed(command: list[str], install, marker: Path) -> None:
    """``eksft COMMAND`` in a forked child, SIGKILLed once it reaches the point ``install`` patches in."""

    def child(_trainer, marker):
        def pause():
            marker.write_text("paused")
            time.sleep(120)
            os._exit(3)  # nobody killed us: fail loudly

        install(pause)
        cli.main(command)
        os._exit(4)  # never paused

    kill_while_paused(None, child, marker)


def log_lines(out: Path, name: str) -> list[dict]:
    lines = (out / name).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def model_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name.endswith((".safetensors", ".json"))
            and p.name not in (SFT_LOG, GRPO_LOG)}  # fmt: skip


def kill_resume_compare(command, straight: Path, out: Path, install, log: str, resumed_from: str | None, capfd,
                        caplog, option: str = "last"):  # fmt: skip
    """Kill ``eksft COMMAND`` where ``install`` says, rerun it with ``--resume_from_checkpoint OPTION``, compare."""
    run_until_killed(command, install, out.parent / f"{out.name}.paused")
    capfd.readouterr()
    caplog.clear()
    assert cli.main([*command, "--resume_from_checkpoint", option]) == 0
    printed = capfd.readouterr().out
    if resumed_from:
        assert f"resuming from {out / resumed_from} (step {resumed_from.split('-')[1]})" in printed
    else:
        assert f"--resume_from_checkpoint auto: no checkpoint in {out} yet; starting at step 0" in printed
    # transformers' warning (its handler writes to the stderr of the test session: read from the log records)
    assert "missing keys" not in caplog.text  # the tied head is not stored in a checkpoint, and nothing is missing
    assert log_lines(out, log) == log_lines(straight, log)
    assert model_files(out) == model_files(straight)
    assert hidden_dirs(out) == []
    return printed


# ---- eksft sft ----------------------------------------------------------------------------------------------------

SFT_KILLS = {  # name: (kill point, the checkpoint the resume starts from (None: none yet), --resume_from_checkpoint)
    "after step 1 (no checkpoint yet)": (after_log_of(1), None, "auto"),
    "after step 3": (after_log_of(3), "checkpoint-2", "auto"),
    "in the save of checkpoint-6": (in_save_of(6), "checkpoint-4", "last"),
    "in the append of step 7's line": (in_append_of(7), "checkpoint-6", "last"),
}


@pytest.fixture(scope="module")
def sft_straight(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sft-straight")
    assert cli.main(sft_command(tiny_model_dir, tmp, tmp / "out")) == 0
    assert [r["step"] for r in log_lines(tmp / "out", SFT_LOG)] == list(range(1, 9))
    return tmp / "out"


@pytest.mark.parametrize("kill", SFT_KILLS)
def test_eksft_sft_killed_and_resumed_equals_the_uninterrupted_run(kill, sft_straight, tiny_model_dir, tmp_path, capfd,
                                                                   caplog, reliability):  # fmt: skip
    install, checkpoint, option = SFT_KILLS[kill]
    out = tmp_path / "out"
    printed = kill_resume_compare(sft_command(tiny_model_dir, tmp_path, out), sft_straight, out, install, SFT_LOG,
                                  checkpoint, capfd, caplog, option)  # fmt: skip
    if checkpoint is None:
        assert f"{out / SFT_LOG}: 1 line of an earlier run removed (this run starts at step 0)" in printed
    if len(SFT_KILLS) == 1 + list(SFT_KILLS).index(kill):
        reliability.record(
            "train/sigkill-resume-logs-sft",
            "eksft sft",
            f"SIGKILL at {len(SFT_KILLS)} points of an 8-step run with checkpoints every 2 steps: "
            f"{'; '.join(SFT_KILLS)}; then the same command with --resume_from_checkpoint auto (the first two) or "
            "last",
            "a line 'resuming from checkpoint-N (step N)' (auto without a checkpoint: 'starting at step 0'); "
            "token_stats.jsonl holds steps 1-8 once each, line for "
            "line the uninterrupted run's (the steps logged after the checkpoint and a torn last line are cut before "
            "training goes on); the final model files equal byte for byte; no 'missing keys' message for the tied head",
        )


# ---- eksft grpo ---------------------------------------------------------------------------------------------------

GRPO_KILLS = {
    "after step 3": (after_log_of(3), "checkpoint-2"),
    "in the save of checkpoint-4": (in_save_of(4), "checkpoint-2"),
}


@pytest.fixture(scope="module")
def grpo_straight(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grpo-straight")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(grpo.REWARDS, "variety", variety)
        assert cli.main(grpo_command(tiny_model_dir, tmp, tmp / "out")) == 0
    assert [r["step"] for r in log_lines(tmp / "out", GRPO_LOG)] == list(range(1, 6))
    return tmp / "out"


@pytest.mark.parametrize("kill", GRPO_KILLS)
def test_eksft_grpo_killed_and_resumed_equals_the_uninterrupted_run(kill, grpo_straight, tiny_model_dir, tmp_path,
                                                                    monkeypatch, capfd, caplog, reliability):  # fmt: skip
    monkeypatch.setitem(grpo.REWARDS, "variety", variety)
    install, checkpoint = GRPO_KILLS[kill]
    out = tmp_path / "out"
    kill_resume_compare(grpo_command(tiny_model_dir, tmp_path, out), grpo_straight, out, install, GRPO_LOG,
                        checkpoint, capfd, caplog)  # fmt: skip
    if len(GRPO_KILLS) == 1 + list(GRPO_KILLS).index(kill):
        reliability.record(
            "train/sigkill-resume-logs-grpo",
            "eksft grpo",
            f"SIGKILL at {len(GRPO_KILLS)} points of a 5-step run with checkpoints every 2 steps: "
            f"{'; '.join(GRPO_KILLS)}; then the same command with --resume_from_checkpoint last",
            "grpo_log.jsonl holds steps 1-5 once each, line for line the uninterrupted run's (rewards, loss, entropy, "
            "completion lengths, clip ratios; step_time, a wall-clock time, excepted); the final model files equal byte "
            "for byte",
        )


# ---- the cut itself -----------------------------------------------------------------------------------------------


def test_cut_back_keeps_earlier_steps_byte_for_byte_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = ['{"step": 1, "loss": NaN}', '{"step": 2, "eval_loss": 1.5}', "not json, but not last either",
             '{"step": 3, "loss": 0.5}', '{"step": 2.0}', '{"step": 4, "lo']  # fmt: skip
    path.write_text("\n".join(lines))
    assert step_log.cut_back(path, 2) == 2  # step 3 and the torn line; the undatable middle line stays
    assert path.read_text() == "\n".join(lines[:3] + [lines[4]]) + "\n"
    assert step_log.cut_back(path, 2) == 0
    assert step_log.cut_back(path, 0) == 3 and path.read_text() == lines[2] + "\n"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert step_log.cut_back(path, 0) == 2 and not path.exists()
    assert step_log.cut_back(path, 5) == 0  # no file: nothing to do


def test_a_kill_during_the_cut_leaves_the_old_or_the_new_file(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    old = "".join(json.dumps({"step": s}) + "\n" for s in range(1, 6))
    path.write_text(old)

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        step_log.cut_back(path, 3)
    assert path.read_text() == old and [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
