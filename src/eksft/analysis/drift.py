"""Parameter drift: how far fine-tuning moved the weights from the base model (the paper's appendix).

For a group ``G`` of parameters (all of them, one transformer layer, the embeddings, ...)::

    drift(G) = ||theta_G - theta0_G||_2 / ||theta0_G||_2

where ``theta`` are the fine-tuned weights, ``theta0`` the base weights, and the norm is the L2 norm of all the
group's entries taken together (the Frobenius norm of the concatenated tensors), not a mean of per-tensor ratios.
Groups: ``embeddings``, ``layer N`` (every parameter under ``...layers.N.``), ``final norm``, ``lm_head`` and
``other`` (whatever matches none of these, e.g. a vision tower).

Weights are read tensor by tensor straight from the checkpoint files (``model.safetensors`` or a sharded
``model.safetensors.index.json``); no model is instantiated and at most one tensor of each model is in memory, so
this works for checkpoints larger than RAM would allow as a model. Pickled checkpoints (``pytorch_model.bin``) are
refused with the one-line command that converts them: unpickling a file can run any code it carries.
Sums of squares are accumulated in float64 over chunks, whatever the stored dtype.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import ADAPTER_CONFIG, adapter_refusal
from ..errors import UserError
from ..loading import pickle_refusal

__all__ = [
    "DriftReport", "GroupDrift", "WeightSource", "check_compatible", "find_weights", "group_of", "open_weights",
    "parameter_drift",
]  # fmt: skip

SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_FILE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_CHUNK = 1 << 22  # elements per float64 chunk (32 MiB): bounds memory for embeddings of 150k x 8k

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_FINAL_NORM = re.compile(r"(?:^|\.)(?:norm|final_layernorm|final_layer_norm|ln_f)\.")
_LM_HEAD = re.compile(r"(?:^|\.)lm_head\.")
_EMBEDDING = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")


def group_of(name: str) -> str:
    """The group a parameter name belongs to: ``layer N``, ``embeddings``, ``final norm``, ``lm_head`` or ``other``."""
    match = _LAYER.search(name)
    if match:
        return f"layer {int(match.group(1))}"
    if _LM_HEAD.search(name):
        return "lm_head"
    if _EMBEDDING.search(name):
        return "embeddings"
    if _FINAL_NORM.search(name):
        return "final norm"
    return "other"


def _group_order(name: str) -> tuple[int, int]:
    if name.startswith("layer "):
        return (1, int(name.split()[1]))
    return ({"embeddings": 0, "final norm": 2, "lm_head": 3}.get(name, 4), 0)


@dataclass(frozen=True)
class GroupDrift:
    """Drift of one group: ``relative = delta_norm / base_norm`` (0 when both are 0, inf for a zero base)."""

    name: str
    delta_norm: float  # ||theta - theta0||_2 over the group
    base_norm: float  # ||theta0||_2 over the group
    num_parameters: int  # entries in the group

    @property
    def relative(self) -> float:
        if self.base_norm > 0:
            return self.delta_norm / self.base_norm
        return 0.0 if self.delta_norm == 0 else math.inf

    def to_dict(self) -> dict:
        return {"relative": self.relative, "delta_norm": self.delta_norm, "base_norm": self.base_norm,
                "num_parameters": self.num_parameters}  # fmt: skip


@dataclass(frozen=True)
class DriftReport:
    total: GroupDrift  # every compared parameter
    groups: tuple[GroupDrift, ...]  # embeddings, layer 0..N, final norm, lm_head, other (those present)
    tied_lm_head: bool = False  # one side stores no lm_head: it was compared as its (tied) input embedding
    skipped: tuple[str, ...] = ()  # non-floating-point tensors (buffers), left out

    @property
    def relative(self) -> float:
        return self.total.relative

    def per_group(self) -> dict[str, float]:
        """``{group name: relative drift}`` in display order."""
        return {group.name: group.relative for group in self.groups}

    def per_layer(self) -> dict[int, float]:
        """``{layer index: relative drift}`` of the transformer layers only."""
        return {int(g.name.split()[1]): g.relative for g in self.groups if g.name.startswith("layer ")}

    def to_dict(self) -> dict:
        return {
            "total": self.total.relative,
            "delta_norm": self.total.delta_norm,
            "base_norm": self.total.base_norm,
            "num_parameters": self.total.num_parameters,
            "tied_lm_head": self.tied_lm_head,
            "groups": {group.name: group.to_dict() for group in self.groups},
        }


class WeightSource:
    """Named tensors of one checkpoint, loaded one at a time: ``shapes`` up front, ``load(name)`` on demand."""

    def __init__(self, description: str, shapes: Mapping[str, tuple[int, ...]], load: Callable[[str], torch.Tensor],
                 floating: Iterable[str]) -> None:  # fmt: skip
        self.description = description
        self.shapes = dict(shapes)
        self.floating = set(floating)
        self._load = load

    def load(self, name: str) -> torch.Tensor:
        return self._load(name)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], description: str = "state dict") -> WeightSource:
        """Tensors that alias an earlier one (tied weights: ``lm_head.weight`` is ``embed_tokens.weight``) are
        dropped, as ``save_pretrained`` drops them, so that shared weights count once."""
        kept: dict[str, torch.Tensor] = {}
        seen = set()
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise UserError(f"{description}: {name!r} is a {type(value).__name__}, not a tensor")
            view = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), value.shape,
                    value.stride())  # fmt: skip
            if value.numel() and view in seen:
                continue
            seen.add(view)
            kept[name] = value
        return cls(description, {k: tuple(v.shape) for k, v in kept.items()}, lambda k: kept[k],
                   [k for k, v in kept.items() if v.is_floating_point()])  # fmt: skip


def _safetensors_source(files: dict[str, Path], description: str) -> WeightSource:
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    shapes, floating = {}, []
    for file, names in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as handle:
                stored = set(handle.keys())
                for name in names:
                    if name not in stored:
                        raise UserError(f"{description}: the index places {name!r} in {file.name}, which lacks it")
                    view = handle.get_slice(name)
                    shapes[name] = tuple(view.get_shape())
                    if view.get_dtype().startswith(("F", "BF")):  # F64/F32/F16/BF16/F8_*
                        floating.append(name)
        except UserError:
            raise
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise UserError(f"{file}: not a readable safetensors file ({err})") from None

    def load(name: str) -> torch.Tensor:
        with safe_open(str(files[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    return WeightSource(description, shapes, load, floating)


def _index_files(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{index}: not a weights index ({err})") from None
    files = {name: index.parent / str(shard) for name, shard in weight_map.items()}
    missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
    if missing:
        raise UserError(f"{index} lists shards that are missing: {', '.join(missing)}")
    return files


def _single_file_keys(file: Path) -> dict[str, Path]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), file)
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise UserError(f"{file}: not a readable safetensors file ({err})") from None


def find_weights(path: str | os.PathLike) -> tuple[Path, str]:
    """``(file, kind)`` with kind ``safetensors`` or ``safetensors-index``; a UserError for anything else, naming what
    is there (a pickled checkpoint is refused: see :func:`pickle_refusal`)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return path, "safetensors-index"
        if path.suffix == ".safetensors":
            return path, "safetensors"
        if path.suffix in (".bin", ".pt", ".pth") or path.name.endswith(".bin.index.json"):
            raise pickle_refusal(str(path.parent), [path.name], path.parent)
        raise UserError(f"{path} is not a weights file (.safetensors or a .safetensors.index.json)")
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; give a model directory (config.json and safetensors weights)")
    if not path.is_dir():
        raise UserError(f"{path} is not a model directory")
    for name, kind in ((SAFETENSORS_INDEX, "safetensors-index"), (SAFETENSORS_FILE, "safetensors")):
        if (path / name).is_file():
            return path / name, kind
    for name in (BIN_INDEX, BIN_FILE):
        if (path / name).is_file():
            raise pickle_refusal(str(path), [name], path)
    if (path / ADAPTER_CONFIG).is_file():
        raise adapter_refusal(path, "--model", "parameter drift is read from full model weights")
    raise UserError(f"{path} is not a Hugging Face model directory: it has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")


def open_weights(source: str | os.PathLike | Mapping[str, torch.Tensor] | WeightSource) -> WeightSource:
    """A :class:`WeightSource` for a model directory, a weights file, a state dict, or a model (its state dict)."""
    if isinstance(source, WeightSource):
        return source
    if isinstance(source, torch.nn.Module):
        return WeightSource.from_state_dict(source.state_dict(), type(source).__name__)
    if isinstance(source, Mapping):
        return WeightSource.from_state_dict(source)
    file, kind = find_weights(source)
    files = _index_files(file) if kind == "safetensors-index" else _single_file_keys(file)
    return _safetensors_source(files, str(Path(source).expanduser()))


def _squared_norms(weight: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    """``(sum (w - b)^2, sum b^2)`` in float64, a chunk of the flattened tensors at a time."""
    weight, base = weight.reshape(-1), base.reshape(-1)
    delta_sq = base_sq = 0.0
    for start in range(0, base.numel(), _CHUNK):
        b = base[start : start + _CHUNK].to(torch.float64)
        w = weight[start : start + _CHUNK].to(torch.float64)
        delta_sq += float(torch.sum((w - b) ** 2))
        base_sq += float(torch.sum(b**2))
    return delta_sq, base_sq


def _names_list(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _embedding_name(source: WeightSource) -> str | None:
    names = [n for n in source.shapes if n.endswith(("embed_tokens.weight", "wte.weight"))]
    return names[0] if len(names) == 1 else None


def _tie_lm_head(model: WeightSource, base: WeightSource) -> tuple[dict[str, str], dict[str, str], bool]:
    """Name maps ``compared name -> stored name`` for both sides, standing in a tied embedding for a missing lm_head.

    A model with ``tie_word_embeddings`` stores no ``lm_head.weight``. When only one side stores it, the other's is
    its input embedding, which is what that model's output layer really is.
    """
    names = {"model": {n: n for n in model.shapes}, "base": {n: n for n in base.shapes}}
    sources = {"model": model, "base": base}
    tied = False
    for head in (n for n in set(model.shapes) ^ set(base.shapes) if _LM_HEAD.search(n)):
        untied = "model" if head in model.shapes else "base"
        other = "base" if untied == "model" else "model"
        embedding = _embedding_name(sources[other])
        if embedding is not None and sources[other].shapes[embedding] == sources[untied].shapes[head]:
            names[other][head] = embedding
            tied = True
    return names["model"], names["base"], tied


def _vocabulary_sizes(model: WeightSource, base: WeightSource) -> tuple[int, int] | None:
    """The two embedding row counts when both models have one embedding and the counts differ."""
    names = _embedding_name(model), _embedding_name(base)
    if None in names:
        return None
    sizes = model.shapes[names[0]][0], base.shapes[names[1]][0]
    return sizes if sizes[0] != sizes[1] else None


def check_compatible(model: WeightSource, base: WeightSource) -> tuple[dict[str, str], dict[str, str], bool]:
    """Raise a UserError naming the parameters whose names or shapes differ; else the name maps and ``tied``."""
    hint = "give as --base the model this one was fine-tuned from"
    model_names, base_names, tied = _tie_lm_head(model, base)
    only_model, only_base = set(model_names) - set(base_names), set(base_names) - set(model_names)
    if only_model or only_base:
        parts = []
        if only_model:
            parts.append(f"only in {model.description}: {_names_list(only_model)}")
        if only_base:
            parts.append(f"only in {base.description}: {_names_list(only_base)}")
        raise UserError("the model and the base hold different parameters (not the same architecture?); "
                        + "; ".join(parts) + f"; {hint}")  # fmt: skip
    vocabularies = _vocabulary_sizes(model, base)
    if vocabularies:
        raise UserError(f"the vocabularies differ: {vocabularies[0]} tokens in {model.description}, {vocabularies[1]} "
                        f"in {base.description}, so neither drift nor KL(model || base) is defined; {hint}")  # fmt: skip
    mismatched = [
        f"{name} {model.shapes[model_names[name]]} vs {base.shapes[base_names[name]]}"
        for name in sorted(model_names)
        if model.shapes[model_names[name]] != base.shapes[base_names[name]]
    ]
    if mismatched:
        raise UserError(f"parameter shapes differ between {model.description} and {base.description}: "
                        + _names_list(mismatched) + f"; {hint}")  # fmt: skip
    return model_names, base_names, tied


def parameter_drift(
    model: str | os.PathLike | Mapping[str, torch.Tensor] | WeightSource,
    base: str | os.PathLike | Mapping[str, torch.Tensor] | WeightSource,
) -> DriftReport:
    """Relative L2 drift of ``model`` from ``base``, in total and per group (see the module docstring).

    Either argument is a model directory (or weights file), a state dict, or an ``nn.Module``. Both must hold the
    same parameter names with the same shapes (a tied lm_head missing on one side is compared as the embedding);
    otherwise a UserError names the differences.
    """
    model_source, base_source = open_weights(model), open_weights(base)
    model_names, base_names, tied = check_compatible(model_source, base_source)

    sums: dict[str, list[float]] = {}  # group -> [delta_sq, base_sq, count]
    skipped = []
    for name in sorted(model_names):
        model_name, base_name = model_names[name], base_names[name]
        if model_name not in model_source.floating or base_name not in base_source.floating:
            skipped.append(name)  # integer buffers (position ids, ...) are not weights
            continue
        delta_sq, base_sq = _squared_norms(model_source.load(model_name), base_source.load(base_name))
        entry = sums.setdefault(group_of(name), [0.0, 0.0, 0])
        entry[0] += delta_sq
        entry[1] += base_sq
        entry[2] += math.prod(base_source.shapes[base_name])
    if not sums:
        raise UserError(f"{base_source.description} holds no floating-point weights to compare")

    groups = tuple(
        GroupDrift(name, math.sqrt(d), math.sqrt(b), int(n))
        for name, (d, b, n) in sorted(sums.items(), key=lambda item: _group_order(item[0]))
    )
    total = GroupDrift(
        "total",
        math.sqrt(sum(v[0] for v in sums.values())),
        math.sqrt(sum(v[1] for v in sums.values())),
        int(sum(v[2] for v in sums.values())),
    )
    return DriftReport(total=total, groups=groups, tied_lm_head=tied, skipped=tuple(skipped))
