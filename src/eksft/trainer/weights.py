"""Model weights are read from ``.safetensors`` files only: unpickling a ``pytorch_model.bin`` can run arbitrary code.

A model given by path (policy, reference, GRPO policy) is loaded with ``use_safetensors=True``; a user who trusts a
pickle checkpoint can still set ``model_init_kwargs: {use_safetensors: false}`` explicitly, as with
``trust_remote_code`` (off unless set). A local directory that holds only pickle weights is refused before loading,
with the one-line conversion to run.
"""

from __future__ import annotations

from ..loading import check_safetensors_weights


def use_safetensors(model, args, option: str) -> None:
    """Before a trainer loads ``model`` from a path: ``use_safetensors=True`` unless set, and the pickle-only check."""
    if not isinstance(model, str):
        return
    args.model_init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
    if args.model_init_kwargs["use_safetensors"]:
        check_safetensors_weights(model, option)
