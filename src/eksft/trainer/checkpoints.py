"""Checkpoints that appear only when complete, and the resume logic that only picks complete ones.

The Trainer writes ``checkpoint-N`` in place: the weights, then the optimizer, the scheduler and the RNG states, and
``trainer_state.json`` last. A run killed in between leaves a ``checkpoint-N`` that ``get_last_checkpoint`` (and
``resume_from_checkpoint=True``) picks as the newest: resuming from it then fails, or silently restarts at step 0
with half-trained weights when ``trainer_state.json`` is missing. Rotation (``save_total_limit``) also runs in the
middle of that save and may delete the previous, complete checkpoint first.

Here every process writes into ``<output_dir>/.checkpoint-N.partial/checkpoint-N`` (a hidden name that neither
``get_last_checkpoint``'s ``^checkpoint-\\d+$`` nor rotation's ``checkpoint-*`` glob matches); after a barrier, the
process that writes the model fsyncs it, renames it to ``<output_dir>/checkpoint-N`` and only then rotates the older
ones. A SIGKILL at any moment leaves the previous complete checkpoint in place and at most a hidden staging directory,
removed by the next save. The files are fsynced before the rename so that a machine crash cannot leave a renamed
checkpoint with empty files either. With ``push_to_hub`` and ``hub_strategy`` ``checkpoint`` / ``all_checkpoints``
the upload starts from the renamed checkpoint, not from the staging directory.

``publish_model`` does the same for the final model, which shares ``output_dir`` with the checkpoints and the logs:
file by file, ``config.json`` (the file that makes a directory a model directory) removed first and put back last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..errors import UserError
from ..files import replace_directory

FINAL_STAGING = ".final.partial"  # inside output_dir: same file system, and hidden from checkpoint globs
EXTRA_STATE_NAME = "eksft_state.json"  # in a checkpoint, next to trainer_state.json (AtomicCheckpoints._extra_state)
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# staging directories and the `.checkpoint-N.old-*` that `replace_directory` uses when checkpoint-N already exists
STAGING_GLOB = f".{PREFIX_CHECKPOINT_DIR}-*"


def last_complete_checkpoint(folder: str | os.PathLike, before: int | None = None) -> str | None:
    """The newest ``checkpoint-N`` of ``folder`` (with ``N < before`` if given) that holds ``trainer_state.json``; None
    when there is none.

    Our checkpoints are complete by construction (renamed into place); ``trainer_state.json`` is also the last file
    that plain transformers writes in place, so a checkpoint of an older run cut short mid-save is skipped too.
    """
    if not os.path.isdir(folder):
        return None
    steps = [
        (int(match.group(1)), name)
        for name in os.listdir(folder)
        if (match := CHECKPOINT_NAME.match(name)) and os.path.isfile(os.path.join(folder, name, TRAINER_STATE_NAME))
    ]
    steps = [(step, name) for step, name in steps if before is None or step < before]
    return os.path.join(folder, max(steps)[1]) if steps else None


RESUME_LAST = (True, "true", "True", "last")  # the newest complete checkpoint; an error when there is none
RESUME_AUTO = "auto"  # the newest complete checkpoint if there is one, else a fresh start


def resolve_checkpoint(value, output_dir: str, announce: bool = True) -> str | None:
    """The checkpoint that ``resume_from_checkpoint`` names, for ``Trainer.train`` and the commands alike.

    None / False: none. True, ``"last"``, ``"true"``: the newest *complete* checkpoint of ``output_dir`` (a
    ``UserError`` when there is none). ``"auto"``: the same when there is one, else None (a fresh start, said when
    ``announce``): one command both starts a job and restarts it after a preemption. A path must be a complete
    checkpoint (a directory cut short by a crash lacks its ``trainer_state.json``).
    """
    if value is None or value is False:
        return None
    if value == RESUME_AUTO:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None and announce:
            print(f"--resume_from_checkpoint auto: no checkpoint in {output_dir} yet; starting at step 0", flush=True)
        return checkpoint
    if value in RESUME_LAST:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise UserError(
                f"--resume_from_checkpoint {value}: no checkpoint in {output_dir} (only complete checkpoint-N "
                "directories count)"
            )
        return checkpoint
    if not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint: no checkpoint directory {value}")
    if not os.path.isfile(os.path.join(value, TRAINER_STATE_NAME)):
        raise UserError(
            f"--resume_from_checkpoint: {value} is not a complete checkpoint (no {TRAINER_STATE_NAME}); use "
            "--resume_from_checkpoint last for the newest complete one"
        )
    return value


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(directory, name))
        _fsync(directory)


def publish_checkpoint(staged: str, final: str) -> None:
    """Make the finished ``staged`` checkpoint visible as ``final`` in one rename (an older ``final``, left by a run
    that went further before being resumed from an earlier step, is moved aside first: ``eksft.files``)."""
    _fsync_tree(staged)
    replace_directory(Path(staged), Path(final))
    os.rmdir(os.path.dirname(staged))  # the now empty .checkpoint-N.partial
    _fsync(os.path.dirname(final))  # the rename itself survives a crash


MODEL_MARKERS = ("config.json", "adapter_config.json")  # what makes a directory a model (or a LoRA adapter)
WEIGHT_FILE = re.compile(r"^(model|pytorch_model|adapter_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


def publish_model(staged: str, output_dir: str) -> None:
    """Move the model saved in ``staged`` into ``output_dir``, which holds other things (checkpoints, logs).

    Each file is renamed in whole. ``config.json`` and the weights of an earlier model go first, the weight index and
    ``config.json`` come last: a run killed in between leaves a directory that ``from_pretrained`` (and
    ``eksft.loading.load_tokenizer``: "it has no config.json") refuses, and never a mix of old and new weights.
    """
    _fsync_tree(staged)
    for name in os.listdir(output_dir):
        if (name in MODEL_MARKERS or WEIGHT_FILE.match(name)) and os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    _fsync(output_dir)
    for name in sorted(os.listdir(staged), key=lambda name: (name in MODEL_MARKERS, name.endswith(".index.json"))):
        source, target = os.path.join(staged, name), os.path.join(output_dir, name)
        if os.path.isdir(source):
            replace_directory(Path(source), Path(target))
        else:
            os.replace(source, target)
    os.rmdir(staged)
    _fsync(output_dir)


class AtomicCheckpoints:
    """Trainer mixin (before the Trainer class in the bases): ``_save_checkpoint`` through a staging directory.

    The Trainer's own ``_save_checkpoint`` (and TRL's overrides, which add files to the checkpoint) runs unchanged;
    only the run directory it asks ``_get_output_dir`` for is the staging directory while it runs. Its rotation then
    sees a single checkpoint and deletes nothing; rotation runs again on the real directory after the rename.
    """

    _checkpoint_staging: str | None = None
    _push_pending = False
    _model_in_place = False  # save_final_model has put the model in output_dir: push_to_hub need not save it again

    def _extra_state(self) -> dict:
        """What the trainer needs back on a resume beyond the Trainer's own state (saved as ``EXTRA_STATE_NAME``)."""
        return {}

    def _set_extra_state(self, state: dict) -> None:
        """Take back what ``_extra_state`` returned when the checkpoint was saved."""

    def restore_extra_state(self, checkpoint: str) -> None:
        """Read ``checkpoint``'s ``EXTRA_STATE_NAME`` into ``_set_extra_state`` (called by ``SafeTraining.train`` on a
        resume); a checkpoint of plain transformers, or of an older eksft, has none and changes nothing."""
        path = os.path.join(checkpoint, EXTRA_STATE_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                self._set_extra_state(json.load(handle))

    def save_final_model(self, output_dir: str | None = None, dataset_name: str | None = None) -> None:
        """``save_model(output_dir)`` (default ``args.output_dir``), but a kill at any moment leaves either the previous
        model or a directory without ``config.json`` (which every reader refuses as "not a model directory"), never a
        half-written model.

        Every process saves into ``<output_dir>/.final.partial`` (FSDP and DeepSpeed gather the weights together);
        the process that writes then moves the files into ``output_dir`` (``publish_model``). The model card
        (``README.md``, TRL's) then names ``dataset_name`` and cites the trainer's paper. With ``push_to_hub`` the
        model is then uploaded as ``save_model`` would have, without saving it again.
        """
        output_dir = output_dir or self.args.output_dir
        staging = os.path.join(output_dir, FINAL_STAGING)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed in the middle of this
        self.accelerator.wait_for_everyone()
        self.save_model(staging, _internal_call=True)  # _internal_call: no push of output_dir, staging included
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_model(staging, output_dir)
            if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):  # where TRL writes the card
                self.create_model_card(model_name=Path(output_dir).name, dataset_name=dataset_name)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._model_in_place = True
            try:
                self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
            finally:
                self._model_in_place = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self._model_in_place:  # push_to_hub saves before it uploads: the model is in place already
            return
        super().save_model(output_dir, _internal_call)

    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._checkpoint_staging is not None:  # the Trainer's push of the staged checkpoint: once it is renamed
            self._push_pending = True
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f".{name}.partial")
        if self.args.should_save:  # leftovers of saves that were killed; before anyone writes the new one
            for stale in Path(run_dir).glob(STAGING_GLOB):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()

        self._checkpoint_staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None

        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.state.best_model_checkpoint == staged:  # trainer_state.json must name where the checkpoint will be
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        extra = self._extra_state()
        if extra and self.args.should_save:
            with open(os.path.join(staged, EXTRA_STATE_NAME), "w", encoding="utf-8") as handle:
                json.dump(extra, handle)
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, optimizer shards)
        if self.args.should_save:
            publish_checkpoint(staged, final)
        if self._push_pending:  # only process 0 pushes, and it has renamed the checkpoint
            self._push_pending = False
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,  # as the Trainer does
            )
        self.accelerator.wait_for_everyone()  # no process goes on (or exits) before the checkpoint is visible
