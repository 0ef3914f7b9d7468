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
checkpoint with empty files either.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..atomic import replace_directory

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# staging directories and the `.checkpoint-N.old-*` that `replace_directory` uses when checkpoint-N already exists
STAGING_GLOB = f".{PREFIX_CHECKPOINT_DIR}-*"


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` of ``folder`` that holds ``trainer_state.json``; None when there is none.

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
    return os.path.join(folder, max(steps)[1]) if steps else None


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
    that went further before being resumed from an earlier step, is moved aside first: ``eksft.atomic``)."""
    _fsync_tree(staged)
    replace_directory(Path(staged), Path(final))
    os.rmdir(os.path.dirname(staged))  # the now empty .checkpoint-N.partial
    _fsync(os.path.dirname(final))  # the rename itself survives a crash


class AtomicCheckpoints:
    """Trainer mixin (before the Trainer class in the bases): ``_save_checkpoint`` through a staging directory.

    The Trainer's own ``_save_checkpoint`` (and TRL's overrides, which add files to the checkpoint) runs unchanged;
    only the run directory it asks ``_get_output_dir`` for is the staging directory while it runs. Its rotation then
    sees a single checkpoint and deletes nothing; rotation runs again on the real directory after the rename.
    """

    _checkpoint_staging: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

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
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, optimizer shards)
        if self.args.should_save:
            publish_checkpoint(staged, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,  # as the Trainer does
            )
        self.accelerator.wait_for_everyone()  # no process goes on (or exits) before the checkpoint is visible
