"""How EKSFTTrainer scales the loss and weights the logged metrics, in one process.

The accumulation divisor (``normalization="mean"``), the world-size factor (``"token"``), the rescaling of the logged
loss terms to each micro-batch's own tokens and the token weighting of metrics over processes used to be checked
only by the two-process torchrun test (tests/trainer/test_multiprocess.py); a mutation run found each of them
removable without any single-process test failing. Here a second process is simulated: its share of the
gather is a tensor the same code computed on another micro-batch.
"""

import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset

from eksft.trainer import EKSFTTrainer

TOKEN_MEANS = ("mean_entropy", "mean_kl", "frac_masked", "frac_entropy_set", "frac_kl_set", "mean_token_accuracy")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("objective", ["nll", "dft"])  # no selection: its top-k counts depend on the batch
def test_mean_normalization_accumulation_equals_one_batch_on_identical_rows(tiny_model, make_config, conversation,
                                                                           objective):  # fmt: skip
    # identical rows: the mean over both equals the mean of the two means, so batch 2 x 1 and 1 x 2 must agree,
    # and only if each accumulated micro-batch loss is divided by the number of micro-batches
    data = Dataset.from_list([{"messages": conversation(3)}] * 2)
    common = dict(objective=objective, normalization="mean", max_steps=1, optim="sgd", learning_rate=0.5,
                  lr_scheduler_type="constant", max_grad_norm=0.0, seed=1)  # fmt: skip
    results = []
    for batch_size, accumulation in [(2, 1), (1, 2)]:
        args = make_config(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **common)
        trainer = EKSFTTrainer(tiny_model, args=args, train_dataset=data)
        before = snapshot(trainer.model)
        trainer.train()
        results.append((snapshot(trainer.model), trainer.state.log_history[0]))
    (large, large_log), (accumulated, accumulated_log) = results
    assert any(not torch.equal(large[name], before[name]) for name in large)  # the step moved the weights
    for name, value in large.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-7, msg=name)
    for key in ("loss", "ce", "grad_norm"):
        assert accumulated_log[key] == pytest.approx(large_log[key], rel=1e-5), key


@pytest.fixture
def two_batches(tiny_model, make_config, messages_dataset):
    """A trainer one step into an eksft run (so KL > 0 and the selection is not empty), and two micro-batches of
    different sizes: rank 0's and a simulated rank 1's."""
    args = make_config(objective="eksft", normalization="token", max_steps=1, per_device_train_batch_size=3,
                       rho=0.3)  # fmt: skip
    trainer = EKSFTTrainer(tiny_model, args=args, train_dataset=messages_dataset)
    trainer.train()
    batches = iter(trainer.get_train_dataloader())
    first, second = trainer._prepare_inputs(next(batches)), trainer._prepare_inputs(next(batches))
    second = {k: v[:1] for k, v in second.items()}  # one row against three: very different token counts
    trainer.model.train()
    return trainer, first, second


def response_tokens(batch) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def logged_metrics(trainer, batch, num_items, gather=None) -> tuple[float, dict]:
    """The loss of ``compute_loss`` on ``batch`` and the metrics it records (the gather replaced by ``gather``)."""
    trainer._metrics["train"].clear()
    if gather is not None:
        trainer.accelerator.gather_for_metrics = gather
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(num_items))
    finally:
        trainer.accelerator.__dict__.pop("gather_for_metrics", None)
    return loss.item(), {name: values[-1] for name, values in trainer._metrics["train"].items()}


def test_logged_loss_terms_are_on_the_micro_batch_own_tokens_and_nothing_else_is_rescaled(two_batches):
    trainer, batch, _ = two_batches
    tokens = response_tokens(batch)
    _, alone = logged_metrics(trainer, batch, tokens)  # the micro-batch is the whole step
    loss, shared = logged_metrics(trainer, batch, 4 * tokens)  # a quarter of the step's tokens
    assert alone["ce"] > 0 and alone["kl_term"] > 0 and alone["entropy_term"] != 0
    for name, value in alone.items():  # the loss terms rescaled back; every other metric untouched
        if name == "num_tokens":  # a running count
            continue
        assert shared[name] == pytest.approx(value, rel=1e-6), name
    assert loss == pytest.approx(alone["ce"] / 4 + (alone["entropy_term"] + alone["kl_term"]) / 4, rel=1e-5)


def test_metrics_are_weighted_by_response_tokens_over_processes(two_batches):
    trainer, first, second = two_batches
    n_first, n_second = response_tokens(first), response_tokens(second)
    assert n_first > 2 * n_second
    _, alone_first = logged_metrics(trainer, first, n_first)
    captured = {}

    def capture(local):
        captured["local"] = local.clone()
        return local

    _, alone_second = logged_metrics(trainer, second, n_second, gather=capture)
    _, both = logged_metrics(trainer, first, n_first,
                             gather=lambda local: torch.cat([local, captured["local"]]))  # fmt: skip
    for name in (*TOKEN_MEANS, "ce"):
        expected = (alone_first[name] * n_first + alone_second[name] * n_second) / (n_first + n_second)
        assert both[name] == pytest.approx(expected, rel=1e-6), name
    attended = int(first["attention_mask"].sum() + second["attention_mask"].sum())
    assert both["num_tokens"] - alone_second["num_tokens"] == attended  # num_tokens counts every process's tokens


def test_world_size_factor_makes_the_ddp_average_the_token_mean(two_batches, monkeypatch):
    trainer, first, second = two_batches
    n_first, n_second = response_tokens(first), response_tokens(second)
    one_process = [logged_metrics(trainer, b, n)[0] for b, n in ((first, n_first), (second, n_second))]
    token_mean = (one_process[0] * n_first + one_process[1] * n_second) / (n_first + n_second)
    # two processes, each with its micro-batch and the step's token count; DDP averages their gradients
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    ranks = [logged_metrics(trainer, b, n_first + n_second)[0] for b in (first, second)]
    assert sum(ranks) / 2 == pytest.approx(token_mean, rel=1e-6)
    assert token_mean != pytest.approx(sum(one_process) / 2, rel=1e-3)  # the batches differ enough to tell
