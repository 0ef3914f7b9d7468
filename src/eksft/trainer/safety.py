"""Training that survives NaN/inf steps, SIGINT/SIGTERM and SIGKILL: for ``EKSFTTrainer`` and eksft's GRPO trainer.

* **Non-finite steps.** After clipping and before ``optimizer.step()`` (``on_pre_optimizer_step``), the gradients and
  the losses of the step's micro-batches are checked. A NaN/inf step is skipped: every ``p.grad`` is set to None,
  which torch optimizers treat as "no gradient", so neither the parameters nor the optimizer state (AdamW moments,
  step count) move. The learning-rate schedule still advances: the step and its data are consumed. Each training log
  line carries ``nonfinite_steps`` (the total skipped in this ``train()`` call; 0 again after a resume), and a
  warning names the step. A checkpoint that falls due at a skipped step is not saved (with ``save_total_limit`` it
  would rotate away the one from before the bad steps). After ``max_nonfinite_steps`` skipped steps in a row the run
  ends without saving anything more and ``train()`` raises ``NonFiniteTrainingError``, naming the last complete
  checkpoint from before these steps. (``EKSFTTrainer`` computes its statistics with ``check_finite=False``, so that a
  NaN from the model reaches this check.)
* **fp16 with a GradScaler**: the scaler already skips steps whose gradients overflow and lowers its scale (the
  first steps of a run routinely do), so the gradients are left to it and only a non-finite *loss* is counted.
  **DeepSpeed** steps inside ``backward``; its steps are counted from the loss (and stop the run) but are not skipped,
  and the messages say so.
* **Interruption.** SIGINT and SIGTERM (main thread only; installed for the duration of ``train()``) set a flag; at
  the end of the current optimizer step every process saves the same checkpoint and stops, and ``train()`` raises
  ``TrainingInterrupted`` (or returns normally when that step was the last one: the run is complete). The handlers
  stay until ``train()`` returns: further SIGTERMs are ignored (under SLURM + torchrun each process often gets two
  within milliseconds: the scheduler's and the one torchrun forwards), and only a second SIGINT (Ctrl-C twice: a
  person) aborts at once with a ``KeyboardInterrupt``.
* **Agreement.** Both flags are reduced (max) over processes once per optimizer step, so that every rank skips the
  same steps, stops at the same step and writes its part of the same checkpoint.
* **Checkpoints** appear only when complete, and resuming with ``resume_from_checkpoint=True`` only picks complete
  ones (``eksft.trainer.checkpoints``).
* **Resume.** The per-step log (``eksft.trainer.step_log``) is cut back to the step the run starts from, so that the
  steps a killed run logged after its last checkpoint are not in it twice; one line names the checkpoint and its step;
  a tied head's weight, which checkpoints do not store, is not reported as a missing key.

What is a callback and what is not. The decisions are ``TrainerCallback``s, which any ``transformers.Trainer`` takes:
``TrainingGuard`` (checks each step before the optimizer, skips it, stops the run, vetoes saves) and
``step_log.StepLogWriter`` (appends each logged line). ``SafeTraining`` keeps four small overrides, each where the
Trainer offers no hook: ``training_step`` (the only place that sees each micro-batch's loss), ``log`` (a metric must be
in the line before the Trainer records it), ``train`` (resolves the checkpoint to resume before the Trainer's own
lookup would pick a half-written one, scopes the signal handlers to the call even when it raises, and turns the
guard's verdict into ``NonFiniteTrainingError`` / ``TrainingInterrupted``) and ``_issue_warnings_after_load``; the
atomic checkpoints are ``AtomicCheckpoints``'s (``eksft.trainer.checkpoints``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import UserError
from . import step_log
from .checkpoints import AtomicCheckpoints, last_complete_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_MAX_NONFINITE_STEPS = 5
MAX_NONFINITE_STEPS_HELP = (
    "Stop the run after this many optimizer steps in a row whose loss or gradients are NaN/inf (each of them is "
    "skipped: no update). 0: never stop, only skip and count them."
)


def check_max_nonfinite_steps(value) -> None:
    """The config field ``max_nonfinite_steps`` (in ``EKSFTConfig`` and ``SafeGRPOConfig``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_nonfinite_steps must be an integer >= 0 (0: never stop), got {value!r}")


class NonFiniteTrainingError(UserError):
    """Too many NaN/inf steps in a row: the run stopped, the last complete checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM during ``train()``: a checkpoint of the last finished step was saved first.

    A ``KeyboardInterrupt`` so that code which cleans up on Ctrl-C keeps working and ``except Exception`` does not
    swallow it. ``signum`` is the signal, ``checkpoint`` the saved directory.
    """

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"saved {checkpoint}" if checkpoint else "no checkpoint could be found"
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}: {saved}")


class TrainingGuard(TrainerCallback):
    """Skips and counts non-finite steps, and stops the run on a signal or after too many of them (module docstring).

    ``note_loss`` (called by ``SafeTraining.training_step`` with each micro-batch's loss) and ``request_stop`` (called
    by the signal handler) feed it; without them it still checks the gradients, so it also works as a plain callback.
    """

    def __init__(self, max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS, deepspeed: bool = False):
        self.max_nonfinite_steps = max_nonfinite_steps
        self.deepspeed = deepspeed  # the engine steps inside backward: bad steps are counted, not skipped
        self.reset()

    def reset(self) -> None:
        self.loss_nonfinite: torch.Tensor | None = None  # any micro-batch loss of this step was NaN/inf (no sync)
        self.signal_received = 0  # set by the handler, on this process
        self.stop_signal = 0  # agreed by every process
        self.in_a_row = 0
        self.total = 0
        self.step_was_bad = False  # the step that just ended
        self.first_bad_step: int | None = None  # the first step of the current run of bad steps
        self.failed_at: int | None = None  # the step at which max_nonfinite_steps was reached

    def note_loss(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self.loss_nonfinite = bad if self.loss_nonfinite is None else self.loss_nonfinite | bad

    def request_stop(self, signum: int) -> None:
        self.signal_received = signum

    @property
    def stopping(self) -> bool:
        return self.failed_at is not None or bool(self.stop_signal)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        parameters = list(model.parameters())
        grads = [p.grad for p in parameters if p.grad is not None]
        scaler = getattr(optimizer, "scaler", None)  # accelerate's fp16 GradScaler
        flags = torch.zeros(3, device=args.device)
        if self.loss_nonfinite is not None:
            flags[0] = self.loss_nonfinite.to(flags.device, torch.float32)
        if grads and scaler is None:
            # the max-norm is NaN/inf iff some gradient element is (and, unlike the 2-norm, never overflows)
            norm = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 DTensor
            flags[1] = (~torch.isfinite(norm)).to(flags.device, torch.float32)
        flags[2] = self.signal_received
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss_bad, grads_bad, signum = flags.tolist()
        self.loss_nonfinite = None
        self.stop_signal = int(signum)
        step = state.global_step + 1  # the step being taken
        self.step_was_bad = bool(loss_bad or grads_bad)
        if not self.step_was_bad:
            self.in_a_row = 0
            return
        if scaler is None:
            for p in parameters:
                p.grad = None  # torch optimizers skip parameters without gradient: no update, no state change
        if self.in_a_row == 0:
            self.first_bad_step = step
        self.in_a_row += 1
        self.total += 1
        what = " and ".join(name for name, bad in (("loss", loss_bad), ("gradients", grads_bad)) if bad)
        if self.max_nonfinite_steps and self.in_a_row >= self.max_nonfinite_steps:
            self.failed_at = step
        if state.is_world_process_zero:
            limit = f"the run stops at {self.max_nonfinite_steps}" if self.max_nonfinite_steps else "no limit"
            done = "optimizer step skipped"
            if self.deepspeed:
                done = "counted, not skipped: DeepSpeed steps inside backward"
            logger.warning(
                f"step {step}: non-finite {what}; {done} ({self.in_a_row} in a row, {limit}; {self.total} in total)"
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopping:  # after DefaultFlowCallback, which may have scheduled a save or an evaluation
            control.should_training_stop = True
            control.should_log = True  # the line with the final count, whatever logging_steps is
            control.should_save = self.failed_at is None  # an interruption saves; a failure keeps the last good one
            control.should_evaluate = False
        if self.step_was_bad and not self.stop_signal:  # no scheduled save either: its rotation could delete the
            control.should_save = False  # checkpoint from before these steps

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopping:  # the interruption's checkpoint was saved at the step end; nothing more
            control.should_save = False
            control.should_evaluate = False
        if self.step_was_bad:  # the epoch's last step was bad: no checkpoint of it (as in on_step_end)
            control.should_save = False

    def failure_message(self, output_dir: str) -> str:
        checkpoint = last_complete_checkpoint(output_dir, before=self.first_bad_step)
        if checkpoint is None:
            resume = f"No checkpoint from before these steps is in {output_dir} (save_strategy / save_steps)"
        else:
            option = "last" if checkpoint == last_complete_checkpoint(output_dir) else checkpoint
            resume = (
                f"The last good checkpoint is {checkpoint}, saved before step {self.first_bad_step}. Resuming it "
                f"(--resume_from_checkpoint {option}) restores its optimizer and learning-rate schedule: the run goes "
                "on with the same settings. To change the learning rate or the precision, start a fresh run from its "
                f"weights (--model_name_or_path {checkpoint} and a new --output_dir)"
            )
        applied = (
            "DeepSpeed applied these steps, as it steps inside backward: the weights after them are not to be used"
            if self.deepspeed
            else "the skipped steps did not change the weights or the optimizer"
        )
        return (
            f"step {self.failed_at}: the loss or the gradients were NaN/inf for {self.in_a_row} optimizer steps in a "
            f"row (max_nonfinite_steps={self.max_nonfinite_steps}); stopped without saving the model ({applied}). "
            f"{resume}. To try: a lower learning_rate (or more warm-up), fp32 instead of bf16/fp16 (--bf16 false "
            "--dtype float32), a smaller max_grad_norm, and check the data of these steps (empty or very long "
            "responses)."
        )


@contextlib.contextmanager
def stop_on_signals(request_stop):
    """The first SIGINT / SIGTERM calls ``request_stop(signum)``. The handlers stay until the block ends: a further
    SIGTERM is ignored (a launcher and a scheduler often send one each), a second SIGINT raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers can only be set there
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    received = []

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def handler(signum, frame) -> None:
        name = signal.Signals(signum).name
        # os.write: print() from a signal handler can fail with "reentrant call" while the loop is printing
        if not received:
            received.append(signum)
            request_stop(signum)
            os.write(2, f"\n{name} received: stopping at the end of this step and saving a checkpoint; "
                        "a further SIGINT (Ctrl-C) aborts at once\n".encode())  # fmt: skip
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            os.write(2, f"\n{name} ignored: already stopping at the end of this step with a checkpoint\n".encode())

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        restore()


class SafeTraining(AtomicCheckpoints):
    """Trainer mixin, listed before the Trainer class: ``class T(SafeTraining, trl.SFTTrainer)``. See the module.

    ``step_log_option`` names the config field that holds the per-step log's file name (None: the trainer keeps none).
    """

    step_log_option: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = getattr(self.args, "max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS)  # plain TRL configs lack it
        check_max_nonfinite_steps(limit)
        self.guard = TrainingGuard(limit, deepspeed=self.is_deepspeed_enabled)
        self.add_callback(self.guard)
        if self.step_log_path:
            self.add_callback(step_log.StepLogWriter(self.step_log_path))

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        # True / "last" / "auto" pick only complete checkpoints (the Trainer's get_last_checkpoint would also pick a
        # half-written one); a path must be complete
        resume_from_checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir,
                                                    self.is_world_process_zero())  # fmt: skip
        if resume_from_checkpoint:
            self.restore_extra_state(resume_from_checkpoint)
        self._start_step_log(resume_from_checkpoint)
        self.guard.reset()
        with stop_on_signals(self.guard.request_stop):
            output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        if self.guard.failed_at is not None:
            raise NonFiniteTrainingError(self.guard.failure_message(self.args.output_dir))
        if self.guard.stop_signal and self.state.global_step < self.state.max_steps:  # else every step ran: finished
            saved = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            checkpoint = saved if os.path.isdir(saved) else None
            raise TrainingInterrupted(self.guard.stop_signal, self.state.global_step, checkpoint)
        return output

    def end_run(self) -> None:
        """Wait for every process, then end the run: trackers, and the process group (transformers >= 5.18).

        The DDP wrapper is released first. Otherwise its reducer can be the last owner of a gloo process group and
        destroy it while holding the GIL, which deadlocks with gloo's worker threads (pytorch/pytorch#56297): on CPUs
        about one two-process run in four hung at exit.
        """
        self.accelerator.wait_for_everyone()
        self.model_wrapped = self.model
        self.accelerator.free_memory()  # drops the accelerator's references to the wrapper, then collects garbage
        if hasattr(self, "end"):
            self.end()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.note_loss(loss)
        return loss

    @property
    def step_log_path(self) -> str | None:
        """The per-step log of this run: ``output_dir`` / the file the config names (None: no log)."""
        name = getattr(self.args, self.step_log_option, None) if self.step_log_option else None
        return os.path.join(self.args.output_dir, name) if name else None

    def _start_step_log(self, checkpoint: str | None) -> None:
        """Cut the per-step log back to the step this run starts from, and say where a resume starts."""
        if not self.is_world_process_zero():
            return
        state_file = os.path.join(checkpoint, TRAINER_STATE_NAME) if checkpoint is not None else None
        step = 0  # a fresh run; or a directory without trainer state, which the Trainer refuses or starts at step 0
        if state_file is not None and os.path.isfile(state_file):
            with open(state_file, encoding="utf-8") as handle:
                step = json.load(handle)["global_step"]
        removed = step_log.cut_back(self.step_log_path, step) if self.step_log_path else 0
        lines = f"{removed} line{'s' * (removed != 1)}"
        if checkpoint is not None:
            cut = f"; {lines} of later steps removed from {self.step_log_path}" if removed else ""
            print(f"resuming from {checkpoint} (step {step}){cut}", flush=True)
        elif removed:
            print(f"{self.step_log_path}: {lines} of an earlier run removed (this run starts at step 0)", flush=True)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training log lines (evaluation keys start with eval_)
            logs["nonfinite_steps"] = self.guard.total  # before the Trainer records the line: no callback can
        super().log(logs, start_time)

    def _issue_warnings_after_load(self, load_result) -> None:
        """The Trainer's warnings after loading a checkpoint's weights, less the tied weights: a checkpoint does not
        store a tied head (it is the embedding), so "missing keys: ['lm_head.weight']" would report nothing missing."""
        tied = set(getattr(self.accelerator.unwrap_model(self.model), "all_tied_weights_keys", None) or ())
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)
