"""normalization="token": accumulating micro-batches gives the gradient of one batch of the same tokens.

With sums divided by ``num_items_in_batch`` (the valid tokens of the whole accumulated batch), the loss is a
sum over tokens, so it splits exactly across micro-batches, provided the token selection does not depend on
how the batch is split (``scope="sequence"``). ``random_mask`` draws its own masks and is left out.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eksft.objectives import OBJECTIVES, objective_loss

ACCUMULABLE = [name for name in OBJECTIVES if name != "random_mask"]


def _batch(seed: int, B: int, T: int, V: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ref = logits + 0.5 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.3] = -100  # prompts / padding anywhere
    labels[:, :2] = -100
    labels[0, 2] = 5 % V  # at least one valid target
    return logits, ref, labels


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(ACCUMULABLE),
    seed=st.integers(0, 10_000),
    B=st.integers(2, 5),
    split=st.integers(1, 4),
    rho=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_accumulated_micro_batches_equal_one_batch(name, seed, B, split, rho):
    split = min(split, B - 1)
    T, V = 9, 7
    logits, ref, labels = _batch(seed, B, T, V)
    params = dict(normalization="token", scope="sequence", rho=rho)
    num_items = int((labels[:, 1:] != -100).sum())

    full_logits = logits.clone().requires_grad_(True)
    full = objective_loss(name, full_logits, labels, ref, num_items_in_batch=num_items, **params)
    full.loss.backward()

    micro_logits = logits.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, split), slice(split, B)):
        if not (labels[rows, 1:] != -100).any():
            continue  # a micro-batch without targets contributes nothing
        part = objective_loss(
            name, micro_logits[rows], labels[rows], ref[rows], num_items_in_batch=num_items, **params
        )
        part.loss.backward()
        total += part.loss.item()

    assert total == pytest.approx(full.loss.item(), abs=1e-12)
    assert torch.allclose(micro_logits.grad, full_logits.grad, atol=1e-12)


def test_mean_normalization_weights_micro_batches_equally():
    """The default ("mean") is a per-micro-batch mean: documented, not token-exact under accumulation."""
    logits, ref, labels = _batch(0, 4, 9, 7)
    labels[0, 3:] = -100  # very uneven micro-batches
    full = objective_loss("nll", logits, labels, ref).loss.item()
    halves = [objective_loss("nll", logits[r], labels[r], ref[r]).loss.item() for r in (slice(0, 1), slice(1, 4))]
    assert sum(halves) / 2 != pytest.approx(full, abs=1e-6)


def test_evaluation_loss_does_not_depend_on_gradient_accumulation(tiny_model_dir, tmp_path):
    """normalization="mean": in training each micro-batch's loss is divided by the accumulated micro-batches (its
    share of the step); the evaluation loss is a plain mean, the same whatever gradient_accumulation_steps is."""
    from datasets import Dataset

    from eksft.trainer import EKSFTConfig, EKSFTTrainer

    rows = [
        [{"role": "user", "content": f"What is {i} + {2 * i + 1}?"}, {"role": "assistant", "content": f"{3 * i + 1}."}]
        for i in range(4)
    ]
    data = Dataset.from_list([{"messages": messages} for messages in rows])
    eval_losses = []
    for accumulation in (1, 2):
        args = EKSFTConfig(
            output_dir=str(tmp_path / f"accumulation-{accumulation}"), objective="nll", normalization="mean",
            gradient_accumulation_steps=accumulation, per_device_train_batch_size=1, per_device_eval_batch_size=2,
            max_steps=1, learning_rate=0.0, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", disable_tqdm=True, max_length=64, seed=0,
        )  # fmt: skip
        trainer = EKSFTTrainer(tiny_model_dir, args=args, train_dataset=data, eval_dataset=data)
        trainer.train()  # learning_rate 0: both evaluate the same weights
        eval_losses.append(trainer.evaluate()["eval_loss"])
    assert eval_losses[0] > 0
    assert eval_losses[1] == pytest.approx(eval_losses[0], rel=1e-6)
