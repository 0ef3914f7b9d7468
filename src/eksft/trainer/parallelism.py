"""Which ways of splitting the work EKSFT training supports, checked before the model or the data are loaded.

Supported and tested: one process; DDP (``accelerate launch`` / ``torchrun``, one process per device); FSDP2 and
DeepSpeed ZeRO-3, tied and untied LM heads (``tests/trainer/test_sharded_training.py``). Refused here, with what to
do instead:

* **Context and sequence parallelism** (``parallelism_config`` with ``cp_size`` / ``sp_size`` > 1, in the
  training arguments or the accelerate config). The Trainer then hands each rank a slice of every sequence, with
  labels already shifted (``shift_labels``) before slicing. The objective selects tokens by ranking entropy and KL
  over the batch, so on a slice it would select a different set than on the whole sequence, and shifting each slice
  again would drop or misalign one target per slice boundary.
* **Tensor parallelism** (``tp_size`` > 1): the LM head's vocabulary is split across ranks, and the chunked
  statistics need every row of it on each rank (a sharded head is gathered whole only under FSDP2 and ZeRO-3).
* **Single-process multi-GPU** (``torch.nn.DataParallel``, which the Trainer uses when one process sees several
  GPUs): the statistics are computed outside the model's forward from the whole batch's labels, while each replica
  gets a slice of the inputs.
"""

from __future__ import annotations

import os


def _parallelism_config(args):
    """The ``ParallelismConfig`` the accelerator will use: the training arguments', else the accelerate launcher's
    (``ACCELERATE_USE_PARALLELISM_CONFIG`` with ``PARALLELISM_CONFIG_*`` variables), else None."""
    if getattr(args, "parallelism_config", None) is not None:
        return args.parallelism_config
    if os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").lower() == "true":
        from accelerate.parallelism_config import ParallelismConfig

        return ParallelismConfig()  # reads the PARALLELISM_CONFIG_* variables
    return None


def check_parallelism(args) -> None:
    """Raise ``ValueError`` naming the setting if ``args`` (an ``EKSFTConfig``) asks for an unsupported split."""
    config = _parallelism_config(args)
    if config is not None:
        for field, kind in (("cp_size", "context"), ("sp_size", "sequence")):
            size = getattr(config, field, None) or 1
            if size > 1:
                raise ValueError(
                    f"{kind} parallelism (parallelism_config {field}={size}) is not supported by EKSFT: each rank "
                    f"would select tokens on a slice of every sequence, and the labels would be shifted twice at "
                    f"the slice boundaries. Set {field} to 1 (for long sequences use gradient checkpointing, "
                    f"FSDP2 or ZeRO-3 instead)."
                )
        tp_size = getattr(config, "tp_size", None) or 1
        if tp_size > 1:
            raise ValueError(
                f"tensor parallelism (parallelism_config tp_size={tp_size}) is not supported by EKSFT: the LM head's "
                f"vocabulary would be split across ranks. Set tp_size to 1 and shard with FSDP2 or ZeRO-3 instead."
            )
    n_gpu = args.n_gpu
    if n_gpu > 1:
        raise ValueError(
            f"this process sees {n_gpu} GPUs and was not started by a launcher, so the Trainer would use "
            f"torch.nn.DataParallel, which EKSFT does not support. Start one process per GPU: "
            f"`accelerate launch --num_processes {n_gpu} -m eksft.cli sft ...` or "
            f"`torchrun --nproc_per_node {n_gpu} -m eksft.cli sft ...` (or your script instead of -m eksft.cli sft), "
            f"or use one GPU with CUDA_VISIBLE_DEVICES=0."
        )
