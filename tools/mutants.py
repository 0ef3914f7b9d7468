"""The bugs ``tools/mutation_check.py`` plants, one at a time: plausible one-line slips in the code whose output
users trust (statistics, selection, objectives, the chunked path, the trainer's scaling, resume, pass@k, grading).

``old`` must occur exactly once in ``file``; ``tests`` are pytest arguments run against the mutant from the
repository root: files or node ids (``file::test``), not ``-k`` (the baseline runs the tests of every mutant in one
pytest call, with duplicate arguments removed, which would leave a second ``-k`` expression as a bare argument). ``equivalent`` (a reason) marks a change that cannot alter any output: reported, not scored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    what: str
    tests: tuple[str, ...]
    equivalent: str = ""


TRAINER = "src/eksft/trainer/eksft_trainer.py"
TRAINER_TESTS = ("tests/trainer/test_scaling.py", "tests/trainer/test_trainer.py")
ORACLE = ("tests/objectives/test_oracle.py",)
CHUNKED = ("tests/test_chunked.py",)
STATS = "src/eksft/stats.py"
SELECTION = "src/eksft/selection.py"
BASE = "src/eksft/objectives/base.py"
EKSFT = "src/eksft/objectives/eksft.py"
REWEIGHTED = "src/eksft/objectives/reweighted.py"
RHO1 = "src/eksft/objectives/rho1.py"
CHUNKED_PY = "src/eksft/chunked.py"
METRICS = "src/eksft/evaluation/metrics.py"
GRADING = "src/eksft/grading.py"
PASS_AT_K = ("tests/evaluation/test_metrics.py",)
TOP1 = ("is_top1_matches", "token_stats_is_top1_by_hand", "is_top1_breaks_exact_ties_like_argmax")
GRADING_TESTS = (
    "tests/test_grading.py::test_extract_answer",
    "tests/test_grading.py::test_is_correct",
    "tests/test_grading.py::test_grade_batch_matches_the_table_in_order",
)

MUTANTS: list[Mutant] = [
    # ---- the trainer's scaling and metrics (src/eksft/trainer/eksft_trainer.py) ----
    Mutant("trainer-mean-accumulation", TRAINER,
           "            loss = loss / self.current_gradient_accumulation_steps\n", "",
           "normalization='mean': the loss no longer divided by the accumulated micro-batches", TRAINER_TESTS),
    Mutant("trainer-world-size", TRAINER,
           "loss = loss * (self.accelerator.num_processes // self.get_tp_size())", "loss = loss",
           "normalization='token': the world-size factor dropped", TRAINER_TESTS),
    Mutant("trainer-loss-terms-not-rescaled", TRAINER,
           "share = float(num_items_in_batch) / max(stats.num_valid, 1)", "share = 1.0",
           "the logged ce / entropy_term / kl_term left as shares of the accumulated batch", TRAINER_TESTS),
    Mutant("trainer-rescale-every-metric", TRAINER,
           "value * share if name in LOSS_TERMS else value", "value * share",
           "every logged metric rescaled, not only the loss terms", TRAINER_TESTS),
    Mutant("trainer-metrics-not-token-weighted", TRAINER,
           "weights = [1.0 if name in PER_PROCESS else num_valid for name in names]",
           "weights = [1.0 for name in names]",
           "metrics averaged over processes without weighting by response tokens", TRAINER_TESTS),
    Mutant("trainer-tokens-not-restored", TRAINER,
           '        self._total_train_tokens = state["total_train_tokens"]\n',
           "        pass\n",
           "resume: num_tokens counted from 0 again", ("tests/robustness/test_resume_logs.py",)),
    # ---- resume (src/eksft/trainer/safety.py, step_log.py) ----
    Mutant("resume-no-cut", "src/eksft/trainer/safety.py",
           "removed = step_log.cut_back(self.step_log_path, step) if self.step_log_path else 0", "removed = 0",
           "resume: the per-step log not cut back (steps after the checkpoint twice)",
           ("tests/robustness/test_resume_logs.py",)),
    Mutant("resume-torn-line-kept", "src/eksft/trainer/step_log.py",
           "            if number < len(lines) - 1:\n                kept.append(line)",
           "            kept.append(line)",
           "resume: a torn last line kept", ("tests/robustness/test_resume_logs.py",)),
    Mutant("resume-tied-head-warning", "src/eksft/trainer/safety.py",
           "load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]",
           "tied = tied", "resume: 'missing keys: lm_head.weight' for a tied head again",
           ("tests/robustness/test_resume_logs.py",)),
    # ---- objectives' metrics (src/eksft/objectives/base.py) ----
    Mutant("metrics-frac-kl-from-entropy-set", "src/eksft/objectives/base.py",
           '"frac_kl_set": kl_set.sum() / n,', '"frac_kl_set": entropy_set.sum() / n,',
           "frac_kl_set computed from the entropy set (copy-paste)", ORACLE),
    # ---- the chunked path (src/eksft/chunked.py) ----
    Mutant("chunked-no-finite-check", "src/eksft/chunked.py",
           "    if check_finite:\n        for name, value in", "    if False:\n        for name, value in",
           "the chunked path's NaN/inf check switched off", CHUNKED),
    # ---- grading (src/eksft/grading.py) ----
    Mutant("grading-gold-period-kept", "src/eksft/grading.py",
           'return ("eksft", _TRAILING_PERIOD_RE.sub(r"\\1", gold), ', 'return ("eksft", gold, ',
           "a trailing period in the gold answer no longer stripped", ("tests/test_grading.py",)),
    # ---- the trainer, more (src/eksft/trainer/eksft_trainer.py) ----
    Mutant("trainer-aux-loss-not-accumulated", TRAINER,
           "loss = loss + (weighted / self.current_gradient_accumulation_steps if self.model.training else weighted)",
           "loss = loss + weighted",
           "MoE router loss added whole to every accumulated micro-batch (not its share)",
           ("tests/trainer/test_moe.py::test_nll_with_the_router_loss_matches_sft_trainer",)),
    Mutant("trainer-virtual-tokens-first", TRAINER,
           "return logits[:, extra:] if extra > 0 else logits", "return logits[:, : labels.shape[1]]",
           "prompt tuning: the logits of the virtual tokens kept, the last positions dropped",
           ("tests/trainer/test_prompt_learning.py::test_prompt_learning_nll_matches_sft_trainer",)),
    Mutant("trainer-eval-loss-divided", TRAINER,
           "        if self.model.training:\n            loss = loss / self.current_gradient_accumulation_steps\n",
           "        loss = loss / self.current_gradient_accumulation_steps\n",
           "normalization='mean': the evaluation loss divided by the accumulation steps too",
           ("tests/objectives/test_grad_accumulation.py::test_evaluation_loss_does_not_depend_on_gradient_accumulation",
            "tests/trainer/test_sft_dropin.py::test_evaluate_gives_the_same_eval_loss_accuracy_and_entropy")),
    # ---- token statistics from full logits (src/eksft/stats.py) ----
    Mutant("stats-labels-not-shifted", STATS,
           "    targets = labels[:, 1:]  # [B, T-1]", "    targets = labels[:, :-1]  # [B, T-1]",
           "labels not shifted: logits[t] scored against labels[t] instead of labels[t + 1]", ORACLE),
    Mutant("stats-kl-forward-direction", STATS,
           "stats.kl = dense((p * (log_p - log_q)).sum(-1))",
           "stats.kl = dense((log_q.exp() * (log_q - log_p)).sum(-1))",
           "KL(reference || policy) instead of KL(policy || reference)", ORACLE),
    Mutant("stats-reference-gets-gradient", STATS,
           "log_q = torch.log_softmax(ref_logits[:, :-1][valid].detach().to(dtype), dim=-1)",
           "log_q = torch.log_softmax(ref_logits[:, :-1][valid].to(dtype), dim=-1)",
           "the reference's logits not detached: the KL's gradient reaches the reference", ORACLE),
    Mutant("stats-top-k-not-renormalised", STATS,
           "log_top = torch.log_softmax(logits[:, :-1][valid].detach().to(dtype).topk(k, dim=-1).values, dim=-1)",
           "log_top = log_p.detach().topk(k, dim=-1).values",
           "top-k entropy from the full distribution's top-k probabilities, not renormalised over them", ORACLE),
    Mutant("stats-top-k-entropy-has-gradient", STATS,
           "logits[:, :-1][valid].detach().to(dtype).topk(k", "logits[:, :-1][valid].to(dtype).topk(k",
           "TokenStats.top_k_entropy (documented constant) carries a gradient to the logits",
           ("tests/test_chunked.py::test_token_stats_match",)),
    Mutant("stats-is-top1-detach-removed", STATS,
           "is_top1=dense(logits[:, :-1][valid].detach().argmax(-1) == targets[valid])",
           "is_top1=dense(logits[:, :-1][valid].argmax(-1) == targets[valid])",
           "is_top1 from logits that are not detached", (*(f"tests/test_chunked.py::test_{name}" for name in TOP1),),
           equivalent="argmax returns integer indices, which never carry a gradient; the comparison gives the same "
                      "bool tensor with or without .detach()"),
    # ---- top-rho selection (src/eksft/selection.py) ----
    Mutant("selection-count-rounded", SELECTION,
           "torch.floor(rho * valid_rows.sum(-1).double())", "torch.round(rho * valid_rows.sum(-1).double())",
           "k = round(rho * N) instead of floor(rho * N)", ORACLE),
    Mutant("selection-kl-floor-inclusive", SELECTION,
           "(kl_rows > kl_floor)", "(kl_rows >= kl_floor)",
           "KL set eligibility KL >= kl_floor: with kl_floor=0 the first step's zero KLs enter the KL set", ORACLE),
    Mutant("selection-smallest-ignored", SELECTION,
           "key = scores.detach().double() if largest else -scores.detach().double()",
           "key = scores.detach().double()",
           "largest=False ignored: the largest scores always taken", ORACLE),
    Mutant("selection-ablation-combined", SELECTION,
           "    if use_entropy and use_kl:\n        masked", "    if True:\n        masked",
           "entropy_only / kl_only with combine='intersection': E & {} = nothing masked", ORACLE),
    Mutant("selection-sequence-count-from-batch", SELECTION,
           "k = fraction_count(valid_rows, rho)", "k = fraction_count(valid.reshape(1, -1), rho)",
           "scope='sequence': k counted over the whole micro-batch, not per sequence", ORACLE),
    Mutant("selection-iou-denominator", SELECTION,
           "union = (a | b).sum()", "union = a.sum() + b.sum()",
           "iou divided by |a| + |b| (the overlap counted twice) instead of |a | b|", ORACLE),
    Mutant("selection-kl-detach-removed", SELECTION,
           "kl_rows = scope_rows(kl, scope).detach()", "kl_rows = scope_rows(kl, scope)",
           "the KL scores not detached before the selection", ORACLE,
           equivalent="kl_rows is only compared with kl_floor (a bool) and passed to top_count, which sorts "
                      "scores.detach() itself; every output of select_tokens is a bool mask"),
    # ---- the objectives (src/eksft/objectives/) ----
    Mutant("objectives-entropy-bonus-sign", EKSFT,
           "entropy_term = -params.lambda_entropy * entropy_mean", "entropy_term = params.lambda_entropy * entropy_mean",
           "the entropy term a penalty instead of a bonus", ORACLE),
    Mutant("objectives-token-denominator-local", BASE,
           "denominator = num_items_in_batch if num_items_in_batch is not None else stats.valid.sum()",
           "denominator = stats.valid.sum()",
           "normalization='token': num_items_in_batch ignored, the micro-batch's own count used", ORACLE),
    Mutant("objectives-empty-set-nan", BASE,
           "return total / denominator.to(total.device).clamp(min=1)", "return total / denominator.to(total.device)",
           "an empty token set gives 0/0 = NaN instead of an attached 0", ("tests/objectives/test_bad_input.py",)),
    Mutant("objectives-dft-weight-not-detached", REWEIGHTED,
           "weight.detach() * stats.nll", "weight * stats.nll",
           "DFT / chord / EAFT / IW-SFT weights not detached: their gradient enters the loss", ORACLE),
    Mutant("objectives-iw-sft-batch-mean", REWEIGHTED,
           "mean_log_ratio = log_ratio / valid.sum(-1).clamp(min=1)",
           "mean_log_ratio = log_ratio / valid.sum().clamp(min=1)",
           "IW-SFT: each sequence's log-ratio divided by the batch's token count, not its own", ORACLE),
    Mutant("objectives-eaft-log-k-uncapped", REWEIGHTED,
           "stats.top_k_entropy / math.log(k)", "stats.top_k_entropy / math.log(params.eaft_top_k)",
           "EAFT normalised by log(eaft_top_k) even when the vocabulary is smaller than k", ORACLE),
    Mutant("objectives-asft-lambda-kl", REWEIGHTED,
           "kl_term = params.asft_lambda * reduce(", "kl_term = params.lambda_kl * reduce(",
           "ASFT weighted by EKSFT's lambda_kl instead of asft_lambda", ORACLE),
    Mutant("objectives-chord-phi-weight", REWEIGHTED,
           "_weighted_nll(stats, params, num_items_in_batch, p * (1 - p))",
           "_weighted_nll(stats, params, num_items_in_batch, 1 - p)",
           "CHORD phi weighted by sg(1 - p) instead of sg(p (1 - p))", ORACLE),
    Mutant("objectives-rho1-ratio-from-rho", RHO1,
           "fraction_count(valid_rows, params.rho1_ratio)", "fraction_count(valid_rows, params.rho)",
           "Rho-1 keeps EKSFT's rho fraction instead of rho1_ratio", ORACLE),
    Mutant("objectives-rho1-excess-detach-removed", RHO1,
           "excess = scope_rows(stats.ref_logp - stats.logp.detach(), params.scope)",
           "excess = scope_rows(stats.ref_logp - stats.logp, params.scope)",
           "Rho-1's excess loss not detached before the selection", ORACLE,
           equivalent="excess is only passed to top_count, which sorts scores.detach(); the kept mask is bool and the "
                      "loss is reduce(stats.nll, kept), so no value or gradient depends on the detach"),
    # ---- the chunked path (src/eksft/chunked.py) ----
    Mutant("chunked-entropy-merge-sign", CHUNKED_PY,
           "                        - torch.xlogy(w_new, w_new)", "                        + torch.xlogy(w_new, w_new)",
           "entropy of the merged vocabulary tiles: the mixing term of the new tile with the wrong sign", CHUNKED),
    Mutant("chunked-backward-scale-dropped", CHUNKED_PY,
           "                    if scale != 1.0:\n                        grad_z.mul_(scale)\n", "",
           "backward: the chain rule through logit_scale forgotten", CHUNKED),
    Mutant("chunked-softcap-derivative", CHUNKED_PY,
           "dz_dy = z.div(softcap).square_().neg_().add_(1)", "dz_dy = z.div(softcap).neg_().add_(1)",
           "backward through the soft cap: 1 - tanh instead of 1 - tanh^2", CHUNKED),
    Mutant("chunked-hidden-shift", CHUNKED_PY,
           "h = hidden[:, :-1][valid]", "h = hidden[:, 1:][valid]",
           "the hidden state of position t + 1 projected for the target labels[t + 1]", CHUNKED),
    Mutant("chunked-top1-ties-to-later-tile", CHUNKED_PY,
           "better = tile_top > top_logit[rows]", "better = tile_top >= top_logit[rows]",
           "is_top1: an exact tie in a later vocabulary tile replaces the earlier index", CHUNKED),
    Mutant("chunked-reference-softcap-from-policy", CHUNKED_PY,
           "ref_head.softcap if ref_h is not None else None, tiles)", "head.softcap if ref_h is not None else None, tiles)",
           "backend='torch': the reference's logits soft-capped with the policy's cap", CHUNKED),
    # ---- pass@k (src/eksft/evaluation/metrics.py) ----
    Mutant("metrics-pass-at-k-all-pass-inclusive", METRICS,
           "if n - c < k:", "if n - c <= k:",
           "pass@k = 1 also when n - c == k (one k-subset has no correct sample)", PASS_AT_K),
    Mutant("metrics-pass-at-k-product-range", METRICS,
           "range(n - c + 1, n + 1)", "range(n - c, n + 1)",
           "the product of pass@k starts one factor too early", PASS_AT_K),
    Mutant("metrics-table-repeated-k", METRICS,
           "ks = list(dict.fromkeys(ks))", "ks = list(ks)",
           "pass_at_k_table: a repeated k summed twice", PASS_AT_K),
    Mutant("metrics-table-n-from-ks", METRICS,
           "pass_at_k(len(correct), sum(", "pass_at_k(max(ks), sum(",
           "pass_at_k_table: n taken as the largest k, not the problem's number of samples", PASS_AT_K),
    # ---- grading (src/eksft/grading.py) ----
    Mutant("grading-first-think", GRADING,
           'completion.rsplit("</think>", 1)[-1]', 'completion.split("</think>", 1)[-1]',
           "the text after the first </think> read, not after the last", GRADING_TESTS),
    Mutant("grading-first-box", GRADING,
           "return answers[-1] if answers else None", "return answers[0] if answers else None",
           "the first box is the answer, not the last", GRADING_TESTS),
    Mutant("grading-period-inside-brace-kept", GRADING,
           r're.compile(r"\.(\}*)\s*$")', r're.compile(r"\.()\s*$")',
           "a trailing period stripped only at the very end, not inside a closing brace (\\text{Evelyn.})",
           GRADING_TESTS),
    Mutant("grading-escaped-brace-counted", GRADING,
           '        if char == "\\\\":\n            i += 1\n        elif char == "{":', '        if char == "{":',
           "an escaped brace \\{ or \\} counted as a group when matching the box's braces", GRADING_TESTS),
    Mutant("grading-verify-order", GRADING,
           "verify(gold_parsed, answer_parsed, timeout_seconds=None)",
           "verify(answer_parsed, gold_parsed, timeout_seconds=None)",
           "math-verify called with the answer as the reference (verify is not symmetric)", GRADING_TESTS),
]  # fmt: skip
