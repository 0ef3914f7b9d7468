"""Mixed precision: with ``bf16=True`` the chunked path runs under the same autocast as the materialised one.

accelerate applies autocast by wrapping the prepared model's ``forward``; the chunked path calls the backbone
through TRL's ``_ForwardRedirection``, which replaces that forward, so ``EKSFTTrainer`` must enter the autocast
region itself (``Accelerator.autocast``). Without it the backbone and the statistics silently run in float32.
"""

import pytest
import torch

from eksft.trainer import EKSFTTrainer


def _dtypes_and_loss(trainer, batch, chunked: bool):
    """The dtypes seen inside every MLP of the policy and the reference during one loss + backward, the loss and
    the policy's gradients."""
    seen = set()
    models = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for model in models
        for name, module in model.named_modules()
        if name.endswith("mlp")
    ]
    trainer.args.use_chunked_stats = chunked
    trainer.model.zero_grad()
    try:
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return seen, loss.item(), grads


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("objective", ["eksft", "nll"])
def test_bf16_autocast_reaches_the_backbone_in_the_chunked_path(
    tiny_model, messages_dataset, make_config, objective, device
):
    trainer = EKSFTTrainer(
        tiny_model,
        args=make_config(objective=objective, bf16=True, max_steps=1, use_cpu=device == "cpu"),
        train_dataset=messages_dataset,
    )
    assert trainer.model.device.type == device
    assert next(trainer.model.parameters()).dtype == torch.float32  # weights in float32, compute in bf16
    trainer.train()  # one step: the policy moves away from the reference (KL > 0)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()

    chunked_dtypes, chunked_loss, chunked_grads = _dtypes_and_loss(trainer, batch, chunked=True)
    full_dtypes, full_loss, full_grads = _dtypes_and_loss(trainer, batch, chunked=False)
    assert full_dtypes == {torch.bfloat16}
    assert chunked_dtypes == full_dtypes
    assert chunked_loss == pytest.approx(full_loss, rel=2e-2)
    # same precision on both paths: the gradients agree to bf16 rounding of the statistics, not to bf16-vs-fp32
    for name, grad in full_grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (chunked_grads[name] - grad).abs().max() / scale < 5e-2, name
