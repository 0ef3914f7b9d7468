"""``EKSFTTrainer``: TRL's ``SFTTrainer`` with the loss replaced by any objective of ``eksft.objectives``.

Per micro-batch, ``compute_loss`` runs

1. ONE policy forward with gradients; the statistics the selection uses come from it (the objectives detach them);
2. ONE reference forward under ``torch.no_grad()``, and none at all when the objective needs no reference;
3. ``token statistics -> objective`` (``eksft.stats`` / ``eksft.chunked``, then ``eksft.objectives``).

Everything else (data preparation, assistant-only masks, collation, PEFT wrapping, the training loop, logging,
checkpoints) is TRL's and transformers'. The published trainer ran three forward passes per step (policy without
grad, reference, policy with grad); this one runs two, one of them without grad.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import TrainingArguments
from trl import SFTTrainer
from trl.data_utils import is_conversational
from trl.models.utils import _ForwardRedirection

from ..chunked import chunked_token_stats
from ..heads import backbone_outputs, hidden_states, lm_head_of
from ..objectives import OBJECTIVES, compute_objective
from ..stats import TokenStats, token_stats
from ..templates import apply_template_file, can_mask_assistant, conversations_to_prompt_completion
from .eksft_config import EKSFTConfig
from .moe import router_aux_loss
from .paper import EKSFT_PAPER
from .parallelism import check_parallelism
from .reference import (
    build_reference,
    check_reference_path,
    freeze,
    prepare_reference,
    reference_model,
    resolve_ref_model_mode,
)
from .safety import SafeTraining
from .weights import use_safetensors

logger = logging.getLogger(__name__)

# ObjectiveOutput.metrics that are terms of the loss, normalised like it (see `_micro_batch_metrics`)
LOSS_TERMS = ("ce", "entropy_term", "kl_term")
# metrics averaged over processes rather than over response tokens (see `_record_metrics`)
PER_PROCESS = ("aux_loss",)


class EKSFTTrainer(SafeTraining, SFTTrainer):
    """Supervised fine-tuning with EKSFT or any objective of ``eksft.objectives.OBJECTIVES``.

    Takes every argument of ``trl.SFTTrainer`` (``args`` must be an ``EKSFTConfig``), plus ``ref_model``: a model
    to use as the reference instead of a copy of the policy (copy mode; frozen and placed here). NaN/inf steps are
    skipped, SIGINT/SIGTERM save a checkpoint, and checkpoints are written atomically (``eksft.trainer.safety``).
    A model given by path is read from safetensors files only (``eksft.trainer.weights``).
    """

    _tag_names = ["trl", "sft", "eksft"]
    _name = "EKSFT"
    _paper = EKSFT_PAPER  # cited in the model card that TRL writes next to the model
    step_log_option = "token_stats_file"  # one JSON line per logging step (eksft.trainer.step_log)
    # `compute_loss` returns a loss already scaled for gradient accumulation (see `_scale_for_accumulation`)
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: EKSFTConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        *,
        ref_model: nn.Module | None = None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = EKSFTConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-EKSFT")
        elif not isinstance(args, EKSFTConfig):
            if not isinstance(args, TrainingArguments):
                raise TypeError(
                    f"args must be an EKSFTConfig (it holds the objective), or a TrainingArguments / SFTConfig to "
                    f"convert into one; got {type(args).__name__}"
                )
            # converted as SFTTrainer converts a TrainingArguments: an SFTConfig keeps its fields, and its loss_type
            # ("nll" or "dft") is the objective, so it trains what SFTTrainer trains; a plain TrainingArguments gets
            # the objective's defaults
            values = args.to_dict()
            for key in values:  # to_dict masks every *_token field (hub_token, and SFTConfig's eos/pad tokens)
                if key.endswith("_token"):
                    values[key] = getattr(args, key)
            if "loss_type" in values:
                values["objective"] = {"chunked_nll": "nll"}.get(values["loss_type"], values["loss_type"])
                values["loss_type"] = "nll"
            args = EKSFTConfig(**values)
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("EKSFTTrainer computes the loss from its objective (`objective`); drop compute_loss_func")
        check_parallelism(args)  # before anything is loaded
        self.objective = OBJECTIVES[args.objective]
        self.objective_params = args.objective_params()
        # checked before SFTTrainer loads the model and creates output_dir
        is_peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
        self.ref_model_mode = resolve_ref_model_mode(args.ref_model_mode, is_peft)
        if ref_model is not None and self.ref_model_mode != "copy":
            raise ValueError("ref_model is only used with ref_model_mode='copy' (or 'auto' without PEFT)")
        if args.assistant_only_loss is not False and train_dataset is not None:
            processing_class, train_dataset, eval_dataset = self._train_responses_only(
                model, args, processing_class, train_dataset, eval_dataset
            )

        use_safetensors(model, args, "model")
        if self.objective.needs_reference and self.ref_model_mode == "copy" and ref_model is None:
            if args.ref_model_name_or_path:  # before SFTTrainer creates output_dir
                check_reference_path(args.ref_model_name_or_path, model, args)
        super().__init__(  # args.loss_type is "nll" (EKSFTConfig): the loss is the objective's, in compute_loss
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        # prompt tuning / prefix tuning / P-tuning: the virtual tokens exist only in the PEFT model's own forward
        prompt_config = _prompt_learning_config(self.model)
        self.prompt_learning = prompt_config is not None
        if self.prompt_learning and args.use_chunked_stats:
            logger.warning(
                "prompt-learning PEFT (%s): the statistics come from the full logits of the PEFT model's forward, "
                "which adds the virtual tokens (use_chunked_stats is ignored: the chunked path calls the backbone "
                "directly and would skip them)",
                type(prompt_config).__name__,
            )

        self.ref_model = None  # None with adapter_disabled, or when the objective needs no reference
        if self.objective.needs_reference and self.ref_model_mode == "copy":
            accelerated = {"is_deepspeed": self.is_deepspeed_enabled, "is_fsdp": self.is_fsdp_enabled}
            if ref_model is not None:
                self.ref_model = prepare_reference(freeze(ref_model), self.accelerator, **accelerated)
            else:
                self.ref_model = build_reference(self.model, args, self.accelerator, **accelerated)

        self._redirect = _ForwardRedirection()

    @staticmethod
    def _train_responses_only(model, args, processing_class, train_dataset, eval_dataset):
        """The paper trains on the responses only. ``assistant_only_loss`` None (auto) or True, for conversational
        ``messages`` data: TRL's assistant masks when the template can give them, else the conversations become
        prompt-completion rows, one per assistant turn (``eksft.templates``), whose completion mask TRL applies.
        Prompt-completion data is already limited to the completion by TRL, and plain text has no turns."""
        example = next(iter(train_dataset))
        if not (is_conversational(example) and "messages" in example):
            if args.assistant_only_loss is None:
                args.assistant_only_loss = False
            return processing_class, train_dataset, eval_dataset
        if processing_class is None:  # loaded here as SFTTrainer would, to read its template
            from transformers import AutoProcessor
            from trl.trainer.utils import get_config_model_id

            name = model if isinstance(model, str) else get_config_model_id(model.config)
            revision = (args.model_init_kwargs or {}).get("revision")
            processing_class = AutoProcessor.from_pretrained(name, revision=revision,
                                                             trust_remote_code=args.trust_remote_code)  # fmt: skip
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a VLM processor holds one
        apply_template_file(tokenizer, args.chat_template_path)  # as SFTTrainer will
        if can_mask_assistant(tokenizer):
            args.assistant_only_loss = True
            return processing_class, train_dataset, eval_dataset
        logger.warning(
            "The chat template has no {% generation %} markers and TRL has no patched version of it: each "
            "conversation is split into prompt-completion rows, one per assistant turn, so that only the "
            "responses are trained (eksft.templates)."
        )
        args.assistant_only_loss = False
        train_dataset = conversations_to_prompt_completion(train_dataset, tokenizer)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: conversations_to_prompt_completion(v, tokenizer) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = conversations_to_prompt_completion(eval_dataset, tokenizer)
        return processing_class, train_dataset, eval_dataset

    # ---- loss ---------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        # the labels stay out of the forward: the model would otherwise compute its own cross-entropy
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False
        if self.args.use_chunked_stats and not self.prompt_learning:
            (stats, aux_loss), outputs = self._chunked_stats(model, model_inputs, labels), None
        else:
            stats, outputs = self._materialised_stats(model, model_inputs, labels)
            aux_loss = getattr(outputs, "aux_loss", None) if self.aux_loss_enabled else None
        result = compute_objective(self.args.objective, stats, self.objective_params, num_items_in_batch)
        loss = self._scale_for_accumulation(result.loss, num_items_in_batch)
        metrics = self._micro_batch_metrics(result.metrics, stats, num_items_in_batch)
        # SFTTrainer's own metrics, on every response token, from the statistics at hand
        metrics["entropy"] = metrics["mean_entropy"]
        if stats.is_top1 is not None:
            metrics["mean_token_accuracy"] = float(stats.is_top1.sum()) / max(stats.num_valid, 1)
        if aux_loss is not None:  # as SFTTrainer adds it: a micro-batch mean, its share of the accumulated batch
            weighted = self.router_aux_loss_coef * aux_loss
            loss = loss + (weighted / self.current_gradient_accumulation_steps if self.model.training else weighted)
            metrics["aux_loss"] = float(aux_loss.detach())
        self._record_metrics(mode, metrics, stats, inputs)

        if return_outputs:
            if outputs is None:  # evaluation with compute_metrics wants logits; the chunked path never built them
                with torch.no_grad():
                    outputs = model(**model_inputs)
            return loss, outputs
        return loss

    def _top_k(self) -> int | None:
        return self.objective_params.eaft_top_k if self.objective.top_k_entropy else None

    def _reference(self):
        return reference_model(self.model, self.ref_model, unwrap=self.accelerator.unwrap_model)

    def _materialised_stats(self, model, model_inputs, labels) -> tuple[TokenStats, object]:
        # [B, T, V] logits with grad (and the MoE router's aux_loss when enabled)
        outputs = model(**model_inputs, **({"output_router_logits": True} if self.aux_loss_enabled else {}))
        ref_logits = None
        if self.objective.needs_reference:
            with self._reference() as reference:
                ref_logits = _last_positions(reference(**model_inputs).logits, labels)
        # check_finite=False (also in the chunked path): a NaN/inf from the model makes the loss non-finite and the
        # step is skipped (eksft.trainer.safety) instead of raising in the middle of a run
        logits = _last_positions(outputs.logits, labels)
        stats = token_stats(logits, labels, ref_logits, top_k_entropy=self._top_k(), check_finite=False)
        return stats, outputs

    def _chunked_stats(self, model, model_inputs, labels) -> tuple[TokenStats, torch.Tensor | None]:
        """Statistics from hidden states and LM heads (``eksft.chunked``), never holding ``[B, T, V]`` logits.

        The backbone is called directly rather than through the model's forward, so each call is routed through its
        wrapper's forward (TRL's ``_ForwardRedirection``): DDP then prepares its gradient reduction, and FSDP /
        DeepSpeed gather their sharded parameters, as for a normal forward. That redirection also bypasses the
        autocast that accelerate wraps around the prepared model's forward (``bf16`` / ``fp16``), so both calls run
        inside ``Accelerator.autocast()`` here: the backbone and the statistics get the precision the materialised
        path and ``SFTTrainer`` give them (a null context under DeepSpeed, which casts the weights instead).
        """
        ref_hidden = ref_head = None
        if self.objective.needs_reference:
            with self._reference() as reference, self.accelerator.autocast():
                unwrapped = self.accelerator.unwrap_model(reference)
                ref_hidden = self._redirect(reference, unwrapped, hidden_states, unwrapped, **model_inputs)
                ref_head = lm_head_of(unwrapped)  # taken inside: with adapters disabled it is the base head

        def policy_stats(unwrapped, **inputs):  # [B, T, H] hidden states with grad, then the statistics
            head = lm_head_of(unwrapped)
            if self.aux_loss_enabled:
                inputs["output_router_logits"] = True
            outputs = backbone_outputs(unwrapped, **inputs)
            stats = chunked_token_stats(
                outputs.last_hidden_state, labels, head, ref_hidden, ref_head, top_k_entropy=self._top_k(),
                check_finite=False,
            )  # fmt: skip
            aux_loss = None
            if self.aux_loss_enabled:
                aux_loss = router_aux_loss(unwrapped, outputs.router_logits, inputs.get("attention_mask"))
            return stats, aux_loss

        unwrapped = self.accelerator.unwrap_model(model)
        with self.accelerator.autocast():
            return self._redirect(model, unwrapped, policy_stats, unwrapped, **model_inputs)

    def _scale_for_accumulation(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """Make the loss of one micro-batch the right share of the accumulated batch's loss.

        With ``normalization="token"`` the objective already divided by ``num_items_in_batch`` (the response tokens
        of every micro-batch of the step, on every rank when ``average_tokens_across_devices``); as in
        ``Trainer.compute_loss``, DDP then averages gradients over ranks, so the loss is multiplied back by their
        number. Otherwise the loss is a micro-batch mean and, as the Trainer does for such losses, is divided by the
        number of accumulated micro-batches.
        """
        if self.objective_params.normalization == "token" and num_items_in_batch is not None:
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss
        if self.model.training:
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    # ---- metrics ------------------------------------------------------------------------------------------------

    def _micro_batch_metrics(self, metrics: dict[str, float], stats: TokenStats, num_items_in_batch) -> dict:
        """The metrics with the loss terms on this micro-batch's own tokens, whatever the normalization.

        With ``normalization="token"`` the loss terms are sums divided by the tokens of the whole accumulated batch
        on every rank, i.e. this micro-batch's *share* of the loss; rescaled here by ``num_items_in_batch / tokens
        here`` so that the logged ce / entropy_term / kl_term do not depend on the accumulation or the world size.
        """
        if self.objective_params.normalization != "token" or num_items_in_batch is None:
            return metrics
        share = float(num_items_in_batch) / max(stats.num_valid, 1)
        return {name: value * share if name in LOSS_TERMS else value for name, value in metrics.items()}

    def _record_metrics(self, mode: str, metrics: dict[str, float], stats: TokenStats, inputs) -> None:
        """Append the objective's metrics, averaged over all processes, to ``self._metrics`` (logged by ``log``).

        Each process's values are weighted by its number of response tokens: means over tokens (mean entropy,
        fraction masked, ...) become exact means over every token of the micro-batches of all processes; the MoE
        ``aux_loss``, a mean over the router's tokens, is averaged over the processes as SFTTrainer averages it. One
        gather per micro-batch, which also counts the tokens seen (``num_tokens``, as SFTTrainer logs it).
        """
        names = list(metrics)
        num_valid = float(stats.num_valid)
        if "attention_mask" in inputs:
            num_tokens = float(inputs["attention_mask"].sum())
        else:  # padding-free batches carry position_ids instead
            num_tokens = float(inputs["position_ids"].size(1))
        weights = [1.0 if name in PER_PROCESS else num_valid for name in names]
        local = torch.tensor(
            [[num_tokens, num_valid, 1.0, *(metrics[name] * w for name, w in zip(names, weights, strict=True))]],
            dtype=torch.float64,
            device=self.accelerator.device,
        )  # [1, 3 + M]
        total = self.accelerator.gather_for_metrics(local).sum(0).tolist()  # [3 + M]
        for name, weighted_sum in zip(names, total[3:], strict=True):
            self._metrics[mode][name].append(weighted_sum / max(total[2 if name in PER_PROCESS else 1], 1.0))
        if mode == "train":
            self._total_train_tokens += int(total[0]) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _extra_state(self) -> dict:
        # SFTTrainer's running count behind the logged num_tokens is not in the Trainer's state: without this, a
        # resumed run would count from 0 again
        return {"total_train_tokens": self._total_train_tokens}

    def _set_extra_state(self, state: dict) -> None:
        self._total_train_tokens = state["total_train_tokens"]


def _prompt_learning_config(model):
    """The PEFT config of ``model``'s active adapter if it is prompt tuning, prefix tuning or P-tuning (virtual
    tokens), else None."""
    if not is_peft_model(model):
        return None
    config = model.peft_config.get(getattr(model, "active_adapter", "default"))
    return config if getattr(config, "is_prompt_learning", False) else None


def _last_positions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits of the positions the labels cover: prompt tuning and P-tuning put their virtual tokens before the
    sequence, so the PEFT model returns ``num_virtual_tokens`` more positions than there are labels."""
    extra = logits.shape[1] - labels.shape[1]
    return logits[:, extra:] if extra > 0 else logits
