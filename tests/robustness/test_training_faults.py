"""Faults during training: NaN/inf steps, SIGINT/SIGTERM, SIGKILL during and between checkpoint saves; pickle weights.

Each scenario records one row of docs/reliability.md (``reliability.record``). NaN is injected the way it shows up in
practice: NaN hidden states out of a decoder layer, an inf gradient element, or a NaN loss. Interruptions are real
signals: to a separate ``eksft sft`` process, or to this process while ``train()`` has its handlers installed.
SIGKILL runs in a forked child (fast: torch is already imported) that pauses inside the save and is killed there.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import get_last_checkpoint

from eksft import cli, grpo
from eksft.trainer import EKSFTConfig, EKSFTTrainer
from eksft.trainer import checkpoints as checkpoints_module
from eksft.trainer.checkpoints import last_complete_checkpoint
from eksft.trainer.grpo_trainer import SafeGRPOConfig, SafeGRPOTrainer
from eksft.trainer.safety import NonFiniteTrainingError, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[2]
EKSFT = Path(sys.executable).parent / "eksft"
FAST = dict(
    use_cpu=True,
    bf16=False,
    report_to="none",
    disable_tqdm=True,
    logging_steps=1,
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    max_length=128,
    seed=0,
    save_strategy="no",
)


def conversation(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
    ]


@pytest.fixture(scope="module")
def chats() -> Dataset:
    return Dataset.from_list([{"messages": conversation(i)} for i in range(16)])


@pytest.fixture
def data_file(tmp_path) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"messages": conversation(i)}) + "\n" for i in range(16)))
    return str(path)


def sft_args(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return ["sft", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--model_name_or_path", model,
            "--dataset_name", data, "--output_dir", str(out), "--per_device_train_batch_size", "2",
            "--disable_tqdm", "true", *extra]  # fmt: skip


def trainer_for(model: str, dataset, out: Path, callbacks=(), **overrides) -> EKSFTTrainer:
    args = EKSFTConfig(output_dir=str(out), **{**FAST, **overrides})
    return EKSFTTrainer(model, args=args, train_dataset=dataset, callbacks=list(callbacks))


class Snapshots(TrainerCallback):
    """Parameters and optimizer state after every optimizer step."""

    def __init__(self):
        self.params, self.optimizer = {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.params[state.global_step] = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.optimizer[state.global_step] = copy.deepcopy(optimizer.state_dict()["state"])


def equal_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def equal_optimizer_state(a: dict, b: dict) -> bool:
    def same(x, y):
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    return a.keys() == b.keys() and all(
        a[i].keys() == b[i].keys() and all(same(a[i][k], b[i][k]) for k in a[i]) for i in a
    )


def nan_hidden_states(trainer, steps: set[int]):
    """NaN out of the first decoder layer during the given (1-based) optimizer steps."""

    def hook(module, inputs, output):
        return output * math.nan if trainer.state.global_step + 1 in steps else None

    return trainer.model.model.layers[0].register_forward_hook(hook)


class InfGradient(TrainerCallback):
    """One inf gradient element at the given step, after clipping (a callback that runs before the guard)."""

    def __init__(self, step: int):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf


def nan_loss_from(cls, step: int, monkeypatch) -> None:
    """``cls.compute_loss`` returns NaN from the given (1-based) optimizer step on."""
    compute_loss = cls.compute_loss

    def nan_loss(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        return loss * math.nan if self.state.global_step + 1 >= step else loss

    monkeypatch.setattr(cls, "compute_loss", nan_loss)


def complete(checkpoint: Path, step: int) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    names = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    return state["global_step"] == step and names <= {p.name for p in checkpoint.iterdir()}


def hidden_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


# ---- non-finite steps -------------------------------------------------------------------------------------------


def test_nan_and_inf_steps_are_skipped_and_counted(tiny_model_dir, chats, tmp_path, reliability):
    snapshots = Snapshots()
    trainer = trainer_for(tiny_model_dir, chats, tmp_path / "out", [InfGradient(4), snapshots], max_steps=6)
    nan_hidden_states(trainer, {2})
    trainer.train()

    params, optimizer = snapshots.params, snapshots.optimizer
    for skipped in (2, 4):
        assert equal_params(params[skipped], params[skipped - 1]), f"step {skipped} changed the parameters"
        assert equal_optimizer_state(optimizer[skipped], optimizer[skipped - 1]), f"step {skipped} moved AdamW"
    for updated in (3, 5, 6):
        assert not equal_params(params[updated], params[updated - 1]), f"step {updated} did not train"
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["nonfinite_steps"] for entry in logged] == [0, 1, 1, 2, 2, 2]
    lines = [json.loads(line) for line in (tmp_path / "out" / "token_stats.jsonl").read_text().splitlines()]

    def counts(entries):
        return [(entry["step"], entry["nonfinite_steps"]) for entry in entries]

    assert counts(lines) == counts(logged)
    reliability.record(
        "train/nonfinite-step-skipped",
        "Python API",
        "NaN hidden states out of a decoder layer at step 2, one inf gradient element at step 4 (EKSFTTrainer, AdamW, "
        "6 steps)",
        "both steps skipped: parameters and AdamW state equal to the step before; steps 3, 5 and 6 update the "
        "parameters; nonfinite_steps 0, 1, 1, 2, 2, 2 in log_history and token_stats.jsonl",
    )


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tiny_model_dir, chats, tmp_path,
                                                                           reliability):  # fmt: skip
    out = tmp_path / "out"
    snapshots = Snapshots()
    settings = dict(max_steps=6, save_strategy="steps", save_steps=2, save_total_limit=1, max_nonfinite_steps=3)
    trainer = trainer_for(tiny_model_dir, chats, out, [snapshots], **settings)
    nan_hidden_states(trainer, {3, 4, 5, 6})
    with pytest.raises(NonFiniteTrainingError) as stopped:
        trainer.train()

    message = str(stopped.value)
    checkpoint = str(out / "checkpoint-2")
    for fragment in ("step 5", "3 optimizer steps in a row", "max_nonfinite_steps=3", "did not change the weights",
                     f"The last good checkpoint is {checkpoint}, saved before step 3", "--resume_from_checkpoint last",
                     f"--model_name_or_path {checkpoint}", "learning_rate", "fp32", "check the data"):  # fmt: skip
        assert fragment in message, message
    # the save due at step 4 (a skipped step) did not happen, so its rotation did not delete checkpoint-2
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists() and hidden_dirs(out) == []
    assert complete(out / "checkpoint-2", 2)
    saved = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.equal(saved[name], snapshots.params[2][name]) for name in saved)
    assert [e["nonfinite_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 0, 1, 2, 3]

    resumed = trainer_for(tiny_model_dir, chats, out, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6 and complete(out / "checkpoint-6", 6)
    reliability.record(
        "train/nonfinite-steps-stop",
        "Python API",
        "NaN hidden states from step 3 on, max_nonfinite_steps=3, a checkpoint every 2 steps, save_total_limit=1",
        "NonFiniteTrainingError at step 5 naming the count, checkpoint-2 (saved before step 3), how to resume and "
        "how to restart from its weights with other settings; the save due at the skipped step 4 did not happen, so "
        "checkpoint-2 (the weights of step 2) was not rotated away; resume_from_checkpoint=True resumes it and "
        "finishes",
    )


def test_nan_steps_in_a_row_through_the_cli(tiny_model_dir, data_file, tmp_path, monkeypatch, capsys, reliability):
    out = tmp_path / "out"
    args = sft_args(tiny_model_dir, data_file, out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps",
                    "2", "--max_nonfinite_steps", "2")  # fmt: skip
    with monkeypatch.context() as patch:
        nan_loss_from(EKSFTTrainer, 3, patch)
        assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    error = [line for line in captured.err.splitlines() if line.startswith("eksft sft: error: ")]
    assert len(error) == 1 and "step 4: the loss or the gradients were NaN/inf for 2 optimizer steps" in error[0]
    assert str(out / "checkpoint-2") in error[0] and "--resume_from_checkpoint last" in error[0]
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-4").exists()
    assert complete(out / "checkpoint-2", 2)
    last = json.loads((out / "token_stats.jsonl").read_text().splitlines()[-1])
    assert (last["step"], last["nonfinite_steps"]) == (4, 2)

    assert cli.main([*args, "--resume_from_checkpoint", "last"]) == 0
    assert (out / "model.safetensors").is_file()
    reliability.record(
        "train/nonfinite-steps-stop-cli",
        "eksft sft",
        "NaN loss from step 3 on, --max_nonfinite_steps 2, --save_steps 2",
        "exit 2, one 'eksft sft: error:' line naming step 4, the count and checkpoint-2, no traceback; no model "
        "saved; the last token_stats.jsonl line has nonfinite_steps 2; --resume_from_checkpoint last then finishes",
    )


def variety(completions, **kwargs):
    """A reward that differs between completions, so that GRPO has advantages to learn from (accuracy is 0)."""
    return [len(set(c[-1]["content"])) / 10 for c in completions]


def grpo_config(out: Path, **overrides) -> SafeGRPOConfig:
    values = dict({k: v for k, v in FAST.items() if k != "max_length"}, loss_type="dapo", beta=0.0, num_generations=2, per_device_train_batch_size=4,
                  max_completion_length=12, learning_rate=1e-3, use_vllm=False)  # fmt: skip
    return SafeGRPOConfig(output_dir=str(out), **{**values, **overrides})


def prompts(n: int = 8) -> Dataset:
    return Dataset.from_list([{"prompt": [conversation(i)[0]], "answer": str(2 * i)} for i in range(n)])


def test_grpo_skips_nan_steps_and_stops(tiny_model_dir, tmp_path, monkeypatch, reliability):
    monkeypatch.setitem(grpo.REWARDS, "variety", variety)
    compute_loss = SafeGRPOTrainer.compute_loss

    def nan_at_2_and_from_4(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        return loss * math.nan if self.state.global_step + 1 in (2, 4, 5, 6) else loss

    monkeypatch.setattr(SafeGRPOTrainer, "compute_loss", nan_at_2_and_from_4)
    snapshots = Snapshots()
    config = grpo_config(tmp_path / "out", max_steps=6, max_nonfinite_steps=2)
    trainer = grpo.build_trainer(tiny_model_dir, config, prompts(), ["variety"], callbacks=[snapshots])
    assert isinstance(trainer, SafeGRPOTrainer)
    with pytest.raises(NonFiniteTrainingError, match="step 5: .* for 2 optimizer steps in a row"):
        trainer.train()
    assert equal_params(snapshots.params[2], snapshots.params[1])
    assert equal_optimizer_state(snapshots.optimizer[2], snapshots.optimizer[1])
    assert not equal_params(snapshots.params[3], snapshots.params[2])
    assert [e["nonfinite_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 1, 1, 2, 3]
    reliability.record(
        "train/nonfinite-grpo",
        "eksft grpo (build_trainer)",
        "NaN loss at step 2 and from step 4 on, max_nonfinite_steps=2",
        "step 2 skipped (parameters and AdamW state unchanged), step 3 trains, NonFiniteTrainingError at step 5; "
        "nonfinite_steps 0, 1, 1, 2, 3 in log_history",
    )


# ---- interruption -----------------------------------------------------------------------------------------------


class SignalAt(TrainerCallback):
    """Sends ``signals`` to this process at the start of ``step``; records the handler left in place after each."""

    def __init__(self, step: int, *signals: int):
        self.step, self.signals, self.handlers_after = step, signals, []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)
                self.handlers_after.append(signal.getsignal(signum))


def test_sigint_saves_a_checkpoint_two_sigterms_too_and_two_sigints_abort(tiny_model_dir, chats, tmp_path, capfd,
                                                                          reliability):  # fmt: skip
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    sigint = SignalAt(2, signal.SIGINT)
    trainer = trainer_for(tiny_model_dir, chats, out, [sigint], max_steps=5)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.train()
    assert (stopped.value.signum, stopped.value.step, stopped.value.checkpoint) == (2, 2, str(out / "checkpoint-2"))
    assert sigint.handlers_after[0] is not before  # still installed after the first signal
    assert signal.getsignal(signal.SIGINT) == before  # and gone when train() returned
    assert complete(out / "checkpoint-2", 2) and not (out / "model.safetensors").exists()
    resumed = trainer_for(tiny_model_dir, chats, out, max_steps=5)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 5

    # SLURM sends SIGTERM to every process and torchrun forwards its own: two within milliseconds
    before_sigterm = signal.getsignal(signal.SIGTERM)
    capfd.readouterr()
    sigterms = trainer_for(tiny_model_dir, chats, tmp_path / "sigterms", [SignalAt(2, signal.SIGTERM, signal.SIGTERM)],
                           max_steps=5)  # fmt: skip
    with pytest.raises(TrainingInterrupted) as stopped:
        sigterms.train()
    assert (stopped.value.signum, stopped.value.checkpoint) == (15, str(tmp_path / "sigterms" / "checkpoint-2"))
    assert complete(tmp_path / "sigterms" / "checkpoint-2", 2)
    assert signal.getsignal(signal.SIGTERM) == before_sigterm
    assert "SIGTERM ignored: already stopping" in capfd.readouterr().err

    twice = trainer_for(tiny_model_dir, chats, tmp_path / "twice", [SignalAt(2, signal.SIGINT, signal.SIGINT)],
                        max_steps=5)  # fmt: skip
    with pytest.raises(KeyboardInterrupt) as aborted:
        twice.train()
    assert not isinstance(aborted.value, TrainingInterrupted)
    assert signal.getsignal(signal.SIGINT) == before
    assert last_complete_checkpoint(tmp_path / "twice") is None
    reliability.record(
        "train/sigint-python-api",
        "Python API",
        "SIGINT at the start of step 2 of 5; then a run that gets two SIGTERMs in a row there (as under SLURM + "
        "torchrun), and one that gets two SIGINTs",
        "TrainingInterrupted after step 2 with checkpoint-2 complete and no final model, the previous SIGINT "
        "handler back once train() returned; resume_from_checkpoint=True finishes the 5 steps. Two SIGTERMs: the "
        "second one ignored (a note on stderr), the same complete checkpoint-2. Two SIGINTs: KeyboardInterrupt at "
        "once, no checkpoint",
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_an_eksft_sft_process(tiny_model_dir, data_file, tmp_path, signum, reliability):
    out = tmp_path / "out"
    args = sft_args(tiny_model_dir, data_file, out, "--max_steps", "100")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([str(EKSFT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats = out / "token_stats.jsonl"
        deadline = time.monotonic() + 60
        while not (stats.is_file() and stats.read_text()) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signum)  # the first step is logged: training is under way
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stdout + stderr
    name = signal.Signals(signum).name
    match = re.search(rf"^eksft sft: interrupted by {name} at step (\d+): saved (\S+); the model was not saved as "
                      r"final\. Resume with:\n  (eksft sft .*)$", stderr, re.MULTILINE)  # fmt: skip
    assert match, stderr
    step = int(match.group(1))
    assert match.group(2) == str(out / f"checkpoint-{step}") and 0 < step < 100
    assert complete(out / f"checkpoint-{step}", step) and not (out / "model.safetensors").exists()
    resume = shlex.split(match.group(3))
    assert resume[-2:] == ["--resume_from_checkpoint", "last"]
    assert cli.main(resume[1:]) == 0  # the printed command, in this process
    assert json.loads((out / "token_stats.jsonl").read_text().splitlines()[-1])["step"] == 100
    assert (out / "model.safetensors").is_file()
    reliability.record(
        f"train/{name.lower()}-eksft-sft",
        "eksft sft",
        f"{name} sent to the process once its first step is logged (100 steps)",
        f"exit {128 + signum}, no traceback; checkpoint of the step in progress complete, no final model; the "
        "printed resume command (--resume_from_checkpoint last) finishes the 100 steps",
    )


def test_sigterm_during_eksft_grpo(tiny_model_dir, tmp_path, monkeypatch, capsys, reliability):
    monkeypatch.setitem(grpo.REWARDS, "variety", variety)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(8)))  # fmt: skip
    out = tmp_path / "out"
    args = ["grpo", "--config", str(ROOT / "configs" / "grpo_tiny_cpu.yaml"), "--model_name_or_path", tiny_model_dir,
            "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "4", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "12", "--reward_funcs", "variety",
            "--reward_weights", "1.0", "--disable_tqdm", "true"]  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    training_step = SafeGRPOTrainer.training_step

    def sigterm_in_step_2(self, *a, **k):  # one micro-batch per step: one signal
        if self.state.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(SafeGRPOTrainer, "training_step", sigterm_in_step_2)
        assert cli.main(args) == 143
    assert signal.getsignal(signal.SIGTERM) == before
    err = capsys.readouterr().err
    assert f"eksft grpo: interrupted by SIGTERM at step 2: saved {out / 'checkpoint-2'}" in err
    assert "Traceback" not in err
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "model.safetensors").exists()
    resume = shlex.split(err.split("Resume with:\n")[1].splitlines()[0])
    assert cli.main(resume[1:]) == 0
    assert (out / "model.safetensors").is_file() and hidden_dirs(out) == []
    reliability.record(
        "train/sigterm-eksft-grpo",
        "eksft grpo",
        "SIGTERM at the start of step 2 of 4",
        "exit 143, no traceback; checkpoint-2 complete, no final model; the printed resume command finishes",
    )


def test_a_signal_during_the_last_step_finishes_the_run(tiny_model_dir, data_file, tmp_path, monkeypatch, capsys,
                                                        reliability):  # fmt: skip
    out = tmp_path / "out"
    training_step = EKSFTTrainer.training_step

    def sigterm_in_step_2(self, *a, **k):  # one micro-batch per step: one signal
        if self.state.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(EKSFTTrainer, "training_step", sigterm_in_step_2)
        assert cli.main(sft_args(tiny_model_dir, data_file, out, "--max_steps", "2")) == 0
    captured = capsys.readouterr()
    assert f"saved the model to {out}" in captured.out and "interrupted" not in captured.err
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file() and hidden_dirs(out) == []
    assert complete(out / "checkpoint-2", 2)
    reliability.record(
        "train/signal-last-step",
        "eksft sft",
        "SIGTERM during the last step (step 2 of 2)",
        "exit 0: every step ran, so the run counts as finished and the final model is saved (checkpoint-2 too)",
    )


# ---- SIGKILL ----------------------------------------------------------------------------------------------------

KILLED_STEP = 3  # the save that is killed; checkpoint-2 is the previous complete one (save_total_limit=1)


def _after(owner, name: str, pause) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        pause()
        return result

    setattr(owner, name, wrapped)


def _before(owner, name: str, pause) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        pause()
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def _half_written_weights(trainer, pause) -> None:
    import transformers.modeling_utils as modeling_utils

    save = modeling_utils.safe_save_file

    def half(tensors, filename, metadata=None):
        save(tensors, filename, metadata=metadata)
        if trainer.state.global_step == KILLED_STEP:
            os.truncate(filename, os.path.getsize(filename) // 2)
            pause()

    modeling_utils.safe_save_file = half


# where the child stops, inside the save of checkpoint-3 (the trainer is the child's; patches live in the child only)
KILL_POINTS = {
    "before the weights": lambda t, pause: _before(t, "save_model", pause),
    "half-written weights": _half_written_weights,
    "after the weights": lambda t, pause: _after(t, "save_model", pause),
    "after the optimizer": lambda t, pause: _after(t, "_save_optimizer_and_scheduler", pause),
    "after the RNG states": lambda t, pause: _after(t, "_save_rng_state", pause),
    "after trainer_state.json": lambda t, pause: _after(TrainerState, "save_to_json", pause),
    "before the fsync": lambda t, pause: _before(checkpoints_module, "_fsync_tree", pause),
    "before the rename": lambda t, pause: _after(checkpoints_module, "_fsync_tree", pause),
    "after the rename": lambda t, pause: _after(checkpoints_module, "replace_directory", pause),
    "after the rotation": lambda t, pause: _after(checkpoints_module, "rotate_checkpoints", pause),
}
RENAMED = ("after the rename", "after the rotation")


def _train_until_paused(trainer, point: str, marker: Path) -> None:
    """The forked child: train, pause at ``point`` of the save of checkpoint-3, wait for the SIGKILL."""

    def pause():
        if trainer.state.global_step == KILLED_STEP:
            marker.write_text(point)
            time.sleep(60)
            os._exit(3)  # the parent did not kill us: fail loudly

    KILL_POINTS[point](trainer, pause)
    trainer.train()
    os._exit(4)  # never paused


def kill_while_paused(trainer, pause_in_child, marker: Path) -> None:
    child = multiprocessing.get_context("fork").Process(target=pause_in_child, args=(trainer, marker))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), f"the child did not reach its pause (exit code {child.exitcode})"
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        child.kill()


def final_weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, chats, tmp_path_factory) -> dict[str, torch.Tensor]:
    trainer = trainer_for(tiny_model_dir, chats, tmp_path_factory.mktemp("straight"), **KILL_RUN)
    trainer.train()
    return final_weights(trainer)


KILL_RUN = dict(max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=1)


def test_sigkill_during_checkpoint_saves(tiny_model_dir, chats, tmp_path, uninterrupted, reliability):
    for number, point in enumerate(KILL_POINTS):
        out, marker = tmp_path / f"run{number}", tmp_path / f"paused{number}"
        trainer = trainer_for(tiny_model_dir, chats, out, **KILL_RUN)
        kill_while_paused(trainer, lambda t, m, point=point: _train_until_paused(t, point, m), marker)

        expected = f"checkpoint-{KILLED_STEP if point in RENAMED else KILLED_STEP - 1}"
        assert last_complete_checkpoint(out) == str(out / expected), point
        assert get_last_checkpoint(str(out)) == str(out / expected), point  # even transformers' own pick is safe
        assert complete(out / expected, int(expected.split("-")[1])), point
        if point not in RENAMED:  # the partial save is hidden (nothing is written yet before the weights)
            partial = [] if point == "before the weights" else [f".checkpoint-{KILLED_STEP}.partial"]
            assert hidden_dirs(out) == partial, point
        # the parent's copy of the trainer never trained (fork): resuming here is a fresh process resuming
        trainer.train(resume_from_checkpoint=True)
        weights = final_weights(trainer)
        for name, value in uninterrupted.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=f"{point}: {name}")
        assert hidden_dirs(out) == [] and [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"], point
    reliability.record(
        "train/sigkill-during-save",
        "Python API",
        f"SIGKILL inside the save of checkpoint-3 (save_steps=1, save_total_limit=1), at each of {len(KILL_POINTS)} "
        f"points in turn: {', '.join(KILL_POINTS)}",
        f"{len(KILL_POINTS)}/{len(KILL_POINTS)} kills: resume picked checkpoint-2 (the last complete one; the "
        "partial save is a hidden .checkpoint-3.partial that transformers' get_last_checkpoint skips too), or "
        "checkpoint-3 once renamed; the final weights equal an uninterrupted run's bit for bit; no staging "
        "directory left",
    )


class PauseAfterStep(TrainerCallback):
    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.marker.write_text("paused")
            time.sleep(60)
            os._exit(3)


def test_sigkill_between_saves_loses_only_the_steps_since_the_checkpoint(tiny_model_dir, chats, tmp_path,
                                                                           uninterrupted, reliability):  # fmt: skip
    out = tmp_path / "out"
    trainer = trainer_for(tiny_model_dir, chats, out, **{**KILL_RUN, "save_steps": 2})

    def train_until_step_3(t, marker):
        t.add_callback(PauseAfterStep(3, marker))
        t.train()
        os._exit(4)

    kill_while_paused(trainer, train_until_step_3, tmp_path / "paused")
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2") and hidden_dirs(out) == []
    trainer.train(resume_from_checkpoint=True)
    weights = final_weights(trainer)
    assert all(torch.equal(weights[name], value) for name, value in uninterrupted.items())
    reliability.record(
        "train/sigkill-between-saves",
        "Python API",
        "SIGKILL after step 3 of 4, checkpoints every 2 steps",
        "resume from checkpoint-2 (step 3 lost and redone); final weights equal an uninterrupted run's bit for bit",
    )


# ---- several processes ------------------------------------------------------------------------------------------


def test_sigterm_to_one_rank_stops_both_at_the_same_checkpoint(tiny_model_dir, data_file, tmp_path, reliability):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(Path(__file__).with_name("sigterm_rank1.py")),
               *sft_args(tiny_model_dir, data_file, out, "--max_steps", "20", "--per_device_train_batch_size", "1")]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    log = run.stdout + run.stderr
    assert run.returncode != 0  # torchrun reports its workers' exit codes
    # 143 from the process itself, or -15 when torchrun's teardown (it sends SIGTERM to the others once one worker
    # has exited) reaches it after its checkpoint and its message. Either rank can exit first: on a loaded machine
    # rank 0 sometimes does, and rank 1 (the one the signal was sent to) then reads -15.
    exits = dict(re.findall(r"rank\s+: (\d) \(local_rank: \d\)\s+exitcode\s+: (-?\d+)", log))
    assert sorted(exits.values()) in (["143", "143"], ["-15", "143"]) and set(exits) == {"0", "1"}, log[-3000:]
    assert f"eksft sft: interrupted by SIGTERM at step 2: saved {out / 'checkpoint-2'}" in log, log[-3000:]
    names = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "model.safetensors"} <= names
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and hidden_dirs(out) == []
    assert json.loads((out / "token_stats.jsonl").read_text().splitlines()[-1])["step"] == 2
    reliability.record(
        "train/sigterm-one-rank",
        "eksft sft (torchrun, 2 processes)",
        "SIGTERM to the process of rank 1 only, during step 2",
        "both processes stop after step 2 (the last logged step) and write their parts of the same complete "
        "checkpoint-2 (RNG states of ranks 0 and 1); rank 0 prints the resume command; rank 1 exits 143; no final "
        "model",
    )


# ---- security ---------------------------------------------------------------------------------------------------


def pickle_only(model_dir: str, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def test_pickle_weights_are_refused_with_a_working_conversion(tiny_model_dir, data_file, tmp_path, monkeypatch,
                                                              capsys, reliability):  # fmt: skip
    pickled = pickle_only(tiny_model_dir, tmp_path / "pickled")
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2"}) + "\n")
    runs = {
        "ref_model_name_or_path": sft_args(tiny_model_dir, data_file, tmp_path / "a", "--max_steps", "1",
                                           "--ref_model_name_or_path", str(pickled)),
        "--model_name_or_path": ["grpo", "--config", str(ROOT / "configs" / "grpo_tiny_cpu.yaml"), "--model_name_or_path",
                  str(pickled), "--dataset_name", str(prompts_file), "--output_dir", str(tmp_path / "b")],
    }  # fmt: skip
    messages = []
    for option, argv in runs.items():
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"{option} {pickled}: the weights are PyTorch pickle files (pytorch_model.bin)" in err
        messages.append(err)
    command = re.search(r"convert them once and use the new directory: (.*)$", messages[0], re.MULTILINE).group(1)
    command = shlex.split(command)
    assert command[:2] == ["python", "-c"] and command[3:] == [str(pickled), f"{pickled}-safetensors"]
    monkeypatch.setattr(sys, "argv", ["-c", *command[3:]])
    exec(command[2], {})  # the printed conversion, run in this process
    converted = sft_args(str(pickled) + "-safetensors", data_file, tmp_path / "c", "--max_steps", "1")
    assert cli.main(converted) == 0
    reliability.record(
        "security/pickle-weights-refused",
        "eksft sft, eksft grpo",
        "a model directory with pytorch_model.bin and no safetensors, as --ref_model_name_or_path of eksft sft and "
        "as --model_name_or_path of eksft grpo",
        "exit 2 before loading, no traceback, naming the option, the directory and the pickle file; the printed "
        "conversion command writes a directory that eksft sft then trains",
    )


def test_models_load_with_safetensors_and_without_remote_code(tiny_model_dir, data_file, tmp_path, monkeypatch,
                                                              reliability):  # fmt: skip
    import trl.trainer.grpo_trainer
    import trl.trainer.sft_trainer

    for config in (EKSFTConfig, SafeGRPOConfig):
        assert config.__dataclass_fields__["trust_remote_code"].default is False
    for recipe in sorted((ROOT / "configs").glob("*.yaml")):
        assert "trust_remote_code" not in recipe.read_text(), recipe.name
    seen = []
    for module in (trl.trainer.sft_trainer, trl.trainer.grpo_trainer):
        create = module.create_model_from_path
        monkeypatch.setattr(module, "create_model_from_path",
                            lambda path, *a, create=create, **k: seen.append(k) or create(path, *a, **k))  # fmt: skip
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2"}) + "\n")
    assert cli.main(sft_args(tiny_model_dir, data_file, tmp_path / "a", "--max_steps", "1")) == 0
    grpo_args = ["grpo", "--config", str(ROOT / "configs" / "grpo_tiny_cpu.yaml"), "--model_name_or_path",
                 tiny_model_dir, "--dataset_name", str(prompts_file), "--output_dir", str(tmp_path / "b"),
                 "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "2",
                 "--max_completion_length", "4"]  # fmt: skip
    assert cli.main(grpo_args) == 0
    assert len(seen) == 2
    assert all(kwargs["use_safetensors"] is True and kwargs["trust_remote_code"] is False for kwargs in seen)
    reliability.record(
        "security/model-loading-defaults",
        "eksft sft, eksft grpo",
        "default options and every recipe in configs/",
        "the model is loaded with use_safetensors=True and trust_remote_code=False; no recipe sets trust_remote_code",
    )
