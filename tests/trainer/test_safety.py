"""The safety net's parts: complete-checkpoint lookup, resume options, the guard with a GradScaler and under
DeepSpeed, best checkpoints, hub pushes of checkpoints, the final model's save.

The faults themselves (NaN, signals, SIGKILL) are injected in tests/robustness/test_training_faults.py.
"""

import inspect
import json
import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl

from eksft.cli import main
from eksft.commands.recipe import resume_command
from eksft.errors import UserError
from eksft.loading import load_tokenizer
from eksft.trainer import EKSFTConfig, EKSFTTrainer
from eksft.trainer.checkpoints import FINAL_STAGING, AtomicCheckpoints, last_complete_checkpoint, resolve_checkpoint
from eksft.trainer.grpo_trainer import SafeGRPOConfig
from eksft.trainer.safety import TrainingGuard


def checkpoint(path, complete: bool = True):
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_only_complete_checkpoints_are_resumed(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    checkpoint(tmp_path / "checkpoint-9")
    checkpoint(tmp_path / "checkpoint-10")  # numeric order: 10 > 9
    checkpoint(tmp_path / "checkpoint-11", complete=False)  # cut short mid-save by an older run
    checkpoint(tmp_path / ".checkpoint-12.partial" / "checkpoint-12")  # a staging directory
    checkpoint(tmp_path / "checkpoint-13-old")
    (tmp_path / "checkpoint-14").write_text("a file")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_complete_checkpoint(tmp_path, before=10) == str(tmp_path / "checkpoint-9")
    assert last_complete_checkpoint(tmp_path, before=9) is None

    assert resolve_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(UserError, match="checkpoint-11 is not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-11"), str(tmp_path))
    with pytest.raises(UserError, match="no checkpoint in"):
        resolve_checkpoint("true", str(tmp_path / "missing"))
    assert resolve_checkpoint("auto", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_checkpoint("auto", str(tmp_path / "missing")) is None  # the first start of a job: from step 0


def test_resume_command_replaces_any_resume_option():
    assert resume_command("eksft sft", ["--output_dir", "o o", "--resume_from_checkpoint", "o/checkpoint-2"]) == (
        "eksft sft --output_dir 'o o' --resume_from_checkpoint last"
    )
    assert resume_command("eksft grpo", ["--resume_from_checkpoint=true", "--max_steps", "3"]) == (
        "eksft grpo --max_steps 3 --resume_from_checkpoint last"
    )


def test_max_nonfinite_steps_is_validated(tmp_path, capsys):
    for config in (EKSFTConfig, SafeGRPOConfig):
        with pytest.raises(ValueError, match="max_nonfinite_steps must be an integer >= 0"):
            config(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_nonfinite_steps=-1)
    argv = ["sft", "--model_name_or_path", "m", "--dataset_name", "d.json", "--max_nonfinite_steps", "-1"]
    assert main(argv) == 2
    assert "invalid configuration: max_nonfinite_steps must be an integer >= 0 (0: never stop), got -1" in (
        capsys.readouterr().err
    )


def guard_step(guard, params, scaler=None, step=1):
    args = SimpleNamespace(device=torch.device("cpu"), world_size=1)
    state = SimpleNamespace(global_step=step - 1, is_world_process_zero=True)
    model = torch.nn.ParameterList(params)
    guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model, optimizer=SimpleNamespace(scaler=scaler))


def test_a_grad_scaler_keeps_its_overflowing_steps():
    def parameter():
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.tensor([1.0, math.inf, 0.0])
        return p

    guard = TrainingGuard()
    without_scaler = parameter()
    guard_step(guard, [without_scaler])
    assert without_scaler.grad is None and guard.total == 1  # skipped: no gradient, no update

    guard = TrainingGuard()
    with_scaler = parameter()
    guard_step(guard, [with_scaler], scaler=object())  # fp16: the scaler skips it and lowers its scale
    assert with_scaler.grad is not None and guard.total == 0
    guard.note_loss(torch.tensor(math.nan))  # a NaN loss is no overflow: counted, the scaler skips the step
    guard_step(guard, [with_scaler], scaler=object())
    assert with_scaler.grad is not None and guard.total == 1 and guard.in_a_row == 1


def test_bad_steps_name_the_checkpoint_before_them_and_deepspeed_does_not_skip(tmp_path, caplog):
    def bad_step(guard, step):
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.tensor([math.nan, 0.0])
        guard_step(guard, [p], step=step)
        control = TrainerControl(should_save=True)  # a scheduled save
        guard.on_step_end(None, None, control)
        return control.should_save

    checkpoint(tmp_path / "checkpoint-1")
    checkpoint(tmp_path / "checkpoint-3")  # from an earlier run that went further
    for deepspeed in (False, True):
        guard = TrainingGuard(max_nonfinite_steps=2, deepspeed=deepspeed)
        with caplog.at_level(logging.WARNING, logger="eksft.trainer.safety"):
            assert bad_step(guard, 2) is False and bad_step(guard, 3) is False  # no checkpoint of a bad step
        message = guard.failure_message(str(tmp_path))
        assert guard.failed_at == 3 and guard.first_bad_step == 2
        good = str(tmp_path / "checkpoint-1")
        assert f"The last good checkpoint is {good}, saved before step 2" in message, message
        assert f"--resume_from_checkpoint {good})" in message and f"--model_name_or_path {good}" in message
        warnings = [r.getMessage() for r in caplog.records]
        if deepspeed:
            assert "DeepSpeed applied these steps" in message and "skipped" not in message
            assert all("counted, not skipped: DeepSpeed" in w for w in warnings) and len(warnings) == 2
        else:
            assert "the skipped steps did not change the weights or the optimizer" in message
            assert all("optimizer step skipped" in w for w in warnings) and len(warnings) == 2
        caplog.clear()


def test_zero_never_stops_and_every_nan_step_is_skipped(tiny_model, messages_dataset, make_config):
    trainer = EKSFTTrainer(
        tiny_model, args=make_config(max_steps=4, max_nonfinite_steps=0), train_dataset=messages_dataset
    )

    def nan_after_step_1(module, inputs, output):
        return output * math.nan if trainer.state.global_step >= 1 else None

    trainer.model.model.layers[0].register_forward_hook(nan_after_step_1)
    after_step_1 = {}

    class AfterStep1(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                after_step_1.update({name: p.detach().clone() for name, p in model.named_parameters()})

    trainer.add_callback(AfterStep1)
    trainer.train()
    assert [e["nonfinite_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 1, 2, 3]
    assert all(torch.equal(p, after_step_1[n]) for n, p in trainer.model.named_parameters())


def test_the_best_checkpoint_is_named_by_its_final_path(tiny_model, messages_dataset, make_config):
    args = make_config(
        max_steps=3,
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        save_total_limit=1,
    )
    trainer = EKSFTTrainer(tiny_model, args=args, train_dataset=messages_dataset, eval_dataset=messages_dataset)
    trainer.train()
    out = trainer.args.output_dir
    best = trainer.state.best_model_checkpoint
    assert best.startswith(f"{out}/checkpoint-") and ".partial" not in best
    kept = sorted(p for p in os.listdir(out) if p.startswith("checkpoint-"))
    assert f"{out}/{kept[-1]}" == last_complete_checkpoint(out)
    for name in kept:  # rotation kept the best one and the last one; each names the best by its final path
        with open(f"{out}/{name}/trainer_state.json") as f:
            recorded = json.load(f)["best_model_checkpoint"]
        assert recorded.startswith(f"{out}/checkpoint-") and ".partial" not in recorded
    assert best.rsplit("/", 1)[1] in kept


class FakeTrainer:
    """What ``AtomicCheckpoints`` needs of a Trainer, with ``_save_checkpoint`` pushing as transformers' does."""

    def __init__(self, out):
        self.args = SimpleNamespace(output_dir=str(out), should_save=True, save_total_limit=None, push_to_hub=True)
        self.state = SimpleNamespace(global_step=3, best_model_checkpoint=None)
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)
        self.pushed = []

    def _get_output_dir(self, trial):
        return self.args.output_dir

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        os.makedirs(folder)
        with open(os.path.join(folder, "trainer_state.json"), "w") as f:
            f.write("{}")
        self._push_from_checkpoint(folder)

    def _push_from_checkpoint(self, folder):  # transformers starts a background upload of `folder`
        self.pushed.append((folder, os.path.isfile(os.path.join(folder, "trainer_state.json"))))


def test_checkpoints_are_pushed_from_where_they_end_up(tmp_path):
    assert "self._push_from_checkpoint(output_dir)" in inspect.getsource(Trainer._save_checkpoint)

    class Staged(AtomicCheckpoints, FakeTrainer):
        pass

    trainer = Staged(tmp_path)
    trainer._save_checkpoint(None, None)
    assert trainer.pushed == [(str(tmp_path / "checkpoint-3"), True)]


def test_the_final_model_gets_its_config_last(tiny_model, messages_dataset, make_config, tmp_path, monkeypatch):
    trainer = EKSFTTrainer(tiny_model, args=make_config(max_steps=1), train_dataset=messages_dataset)
    plain, out = tmp_path / "plain", tmp_path / "final"
    trainer.save_model(str(plain))
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "model-00001-of-00002.safetensors").write_text("a shard of an earlier model")
    trainer.save_final_model(str(out))

    def files(folder):
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    assert files(out) == files(plain) and sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-1"]
    load_tokenizer(str(out))

    # killed in the middle of the moves: no config.json, so nothing takes the directory for a model
    replace, moved = os.replace, []

    def replace_then_die(source, target):
        if os.path.dirname(target) == str(out):
            if len(moved) == 2:
                raise KeyboardInterrupt("killed")
            moved.append(target)
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_final_model(str(out))
    monkeypatch.undo()
    assert not (out / "config.json").exists() and (out / FINAL_STAGING / "config.json").is_file()
    with pytest.raises(UserError, match="is not a model directory: it has no config.json"):
        load_tokenizer(str(out))

    # killed during the save itself: the previous model stays as it was; the next save cleans up
    trainer.save_final_model(str(out))
    save_model = trainer.save_model

    def half_a_save(path, **kwargs):
        save_model(path, **kwargs)
        os.truncate(os.path.join(path, "model.safetensors"), 10)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer, "save_model", half_a_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_final_model(str(out))
    assert files(out) == files(plain)


def test_the_final_model_is_pushed_without_saving_it_again(tiny_model, messages_dataset, make_config, tmp_path,
                                                           monkeypatch):  # fmt: skip
    trainer = EKSFTTrainer(tiny_model, args=make_config(max_steps=1), train_dataset=messages_dataset)
    saves, pushes = [], []
    trainer_save = Trainer.save_model

    def recorded_save(self, output_dir=None, _internal_call=False):  # every save that writes files
        saves.append(output_dir)
        return trainer_save(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", recorded_save)

    def push_to_hub(commit_message=None, revision=None):  # as the Trainer's: save, then upload output_dir
        trainer.save_model(trainer.args.output_dir)
        pushes.append((commit_message, sorted(os.listdir(trainer.args.output_dir))))

    monkeypatch.setattr(trainer, "push_to_hub", push_to_hub)
    trainer.args.push_to_hub = True
    trainer.save_final_model()
    out = trainer.args.output_dir
    assert saves == [os.path.join(out, FINAL_STAGING)]  # once, into the staging directory; not again for the push
    assert pushes and pushes[0][0] == "Model save" and "config.json" in pushes[0][1]
