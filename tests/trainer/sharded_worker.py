"""One EKSFT run of ``tests/trainer/test_sharded_training.py``, launched by ``accelerate launch`` (FSDP2 or DeepSpeed
ZeRO-3 config, gloo, CPU) or run as one plain process; also the sharded step of ``benchmarks/gpu_check.sh`` (one GPU).

    python sharded_worker.py MODEL DATA OUT [--max_steps N] [--batch B] [--save_steps K] [--resume CHECKPOINT]
                             [--bf16] [--gpu]

``--gpu`` (with CUDA available; the GPU check passes it): train on the GPU, with accelerate's own FSDP/DeepSpeed
set-up (NCCL, nothing patched). Without it the run is the test's CPU run, also on a machine with a GPU. ``--bf16``:
bf16 mixed precision (give the accelerate config the same ``mixed_precision``).

Trains the objective ``asft`` (DFT on every token + KL to the reference; no selection, so that one process with
the whole batch and two processes with half each compute the same thing) with ``normalization="token"`` and plain
SGD with momentum at a constant learning rate (the update is linear in the gradients). Rank 0 writes ``OUT/sharding.json``:
how the policy's and the reference's LM heads are held during the first step (``DTensor`` placements under FSDP2,
the ZeRO-3 placeholder's numel and full shape under DeepSpeed; device and dtype of each).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

from eksft.trainer import EKSFTConfig, EKSFTTrainer


def describe(weight) -> dict:
    where = {"device": str(weight.device), "dtype": str(weight.dtype).removeprefix("torch.")}
    if type(weight).__name__ == "DTensor":
        return {"kind": "DTensor", "placements": [str(p) for p in weight.placements],
                "local_shape": list(weight.to_local().shape), "shape": list(weight.shape), **where}  # fmt: skip
    if hasattr(weight, "ds_shape"):
        return {"kind": "zero3", "numel": weight.numel(), "shape": list(weight.ds_shape), **where}
    return {"kind": type(weight).__name__, "shape": list(weight.shape), **where}


class RecordSharding(TrainerCallback):
    def __init__(self, trainer: EKSFTTrainer, out: Path):
        self.trainer, self.out = trainer, out

    def on_step_begin(self, args, state, control, **kwargs):
        if self.out.exists() or not self.trainer.is_world_process_zero():
            return
        unwrap = self.trainer.accelerator.unwrap_model
        facts = {
            "world_size": self.trainer.accelerator.num_processes,
            "distributed_type": str(self.trainer.accelerator.distributed_type),
            "device": str(self.trainer.accelerator.device),
            "mixed_precision": str(self.trainer.accelerator.mixed_precision),
            "is_fsdp2": bool(self.trainer.is_fsdp_enabled and self.trainer.accelerator.is_fsdp2),
            "is_deepspeed": bool(self.trainer.is_deepspeed_enabled),
            "policy_head": describe(unwrap(self.trainer.model).get_output_embeddings().weight),
            "policy_tied": bool(unwrap(self.trainer.model).config.tie_word_embeddings),
        }
        if self.trainer.ref_model is not None:
            facts["reference_head"] = describe(unwrap(self.trainer.ref_model).get_output_embeddings().weight)
        self.out.write_text(json.dumps(facts, indent=1))


def allow_fsdp_on_cpu() -> None:
    """accelerate sets up FSDP only for GPU-like devices: on CPUs (``MULTI_CPU``) it silently drops the FSDP plugin and
    falls back to DDP. Lift that one check, so that accelerate's own FSDP2 preparation (``fully_shard`` per decoder
    layer and for the root, mixed-precision policy, state-dict handling) runs on the CPU processes with gloo."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # both shared states: AcceleratorState() copies PartialState's fields again each time it is built
            self.distributed_type = PartialState().distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    AcceleratorState.__init__ = init_with_fsdp


def allow_deepspeed_on_cpu() -> None:
    """accelerate sets up DeepSpeed only off the CPU (``use_cpu`` must be False, and then, with no GPU, it finds no
    backend and runs one process). DeepSpeed itself runs on CPUs (its CPU accelerator, gloo): give accelerate the
    gloo backend when no accelerator is found, and the rest (``deepspeed.initialize``, ZeRO-3 partitioning, the
    reference's inference engine) is accelerate's and DeepSpeed's own code."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    prepare = PartialState._prepare_backend

    def prepare_with_gloo(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = prepare(self, cpu, sagemaker_dp, backend)
        if backend is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return backend, distributed_type

    PartialState._prepare_backend = prepare_with_gloo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (needs CUDA)")
    args = parser.parse_args()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch.cuda.is_available() is False")
    if not gpu:  # on a GPU accelerate sets FSDP and DeepSpeed up itself
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            allow_fsdp_on_cpu()
        if deepspeed:
            allow_deepspeed_on_cpu()

    config = EKSFTConfig(
        output_dir=args.out,
        objective="asft",
        normalization="token",
        use_cpu=not gpu and not deepspeed,  # DeepSpeed without a GPU: its CPU backend
        bf16=args.bf16,
        optim="sgd",
        optim_args="momentum=0.9",  # an optimizer state to save and restore
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch,
        max_length=128,
        logging_steps=1,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        save_only_model=False,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    data = Dataset.from_list(json.loads(Path(args.data).read_text()))
    trainer = EKSFTTrainer(args.model, args=config, train_dataset=data)
    trainer.add_callback(RecordSharding(trainer, Path(args.out) / "sharding.json"))
    trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model(args.out)
    trainer.end_run()  # as `eksft sft` ends a run: wrappers released, then the process group (a clean exit)


if __name__ == "__main__":
    main()
