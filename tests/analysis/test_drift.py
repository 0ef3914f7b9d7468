"""Parameter drift: zero for identical weights, the hand-computed ratio for a known perturbation, clear errors."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from eksft.analysis.drift import group_of, parameter_drift
from eksft.errors import UserError

from .conftest import PERTURBED_LAYER


def test_identical_models_have_zero_drift(base_dir):
    report = parameter_drift(base_dir, base_dir)
    assert report.relative == 0.0
    assert set(report.per_group().values()) == {0.0}
    assert report.total.num_parameters == sum(t.numel() for t in load_file(base_dir / "model.safetensors").values())


def test_known_perturbation_of_one_layer(base_dir, perturbed_dir):
    path, deltas = perturbed_dir
    base = load_file(base_dir / "model.safetensors")
    report = parameter_drift(path, base_dir)

    layer = f"layer {PERTURBED_LAYER}"
    for name, value in report.per_group().items():
        if name != layer:
            assert value == 0.0, name
    delta_norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in deltas.values()))
    layer_norm = math.sqrt(sum(float((base[n].double() ** 2).sum()) for n in deltas))
    total_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in base.values()))
    assert report.per_group()[layer] == pytest.approx(delta_norm / layer_norm, rel=1e-5)  # fp32 storage
    assert report.per_layer()[PERTURBED_LAYER] == report.per_group()[layer]
    assert report.relative == pytest.approx(delta_norm / total_norm, rel=1e-5)
    assert list(report.per_group()) == ["embeddings", "layer 0", "layer 1", "final norm"]


def test_state_dicts_modules_and_dtypes(base_dir, perturbed_dir):
    path, _ = perturbed_dir
    from_files = parameter_drift(path, base_dir)
    state = load_file(path / "model.safetensors")
    bf16 = {name: tensor.to(torch.bfloat16) for name, tensor in state.items()}
    assert parameter_drift(state, base_dir).relative == pytest.approx(from_files.relative, rel=1e-12)
    assert parameter_drift(bf16, base_dir).relative == pytest.approx(from_files.relative, rel=0.05)


def test_a_pickled_checkpoint_is_refused_with_the_conversion_command(base_dir, perturbed_dir, tmp_path):
    """Unpickling can run code: a .bin is never loaded, and the message says how to convert it."""

    path, _ = perturbed_dir
    torch.save(load_file(path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"pytorch_model.bin\); eksft reads weights from safetensors files only.*"
                                        r"use_safetensors=False\).save_pretrained"):  # fmt: skip
        parameter_drift(tmp_path, base_dir)
    with pytest.raises(UserError, match="safetensors files only"):
        parameter_drift(tmp_path / "pytorch_model.bin", base_dir)


def test_a_module_is_compared_like_its_files(base_dir, perturbed_dir):
    from transformers import AutoModelForCausalLM

    path, _ = perturbed_dir
    module = AutoModelForCausalLM.from_pretrained(path)  # its state dict has the tied lm_head too
    assert parameter_drift(module, base_dir).relative == pytest.approx(parameter_drift(path, base_dir).relative, rel=1e-12)


def test_sharded_checkpoint(base_dir, perturbed_dir, tmp_path):
    path, _ = perturbed_dir
    state = load_file(path / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert parameter_drift(tmp_path, base_dir).relative == pytest.approx(parameter_drift(path, base_dir).relative)


def test_untied_lm_head_is_compared_with_the_tied_embedding(base_dir):
    base = load_file(base_dir / "model.safetensors")
    untied = {**base, "lm_head.weight": base["model.embed_tokens.weight"] * 1.5}
    report = parameter_drift(untied, base_dir)
    assert report.tied_lm_head
    assert report.per_group()["lm_head"] == pytest.approx(0.5)
    assert report.per_group()["embeddings"] == 0.0


def test_mismatched_names_and_shapes_are_named(base_dir):
    base = load_file(base_dir / "model.safetensors")
    renamed = {("model.extra.weight" if n == "model.norm.weight" else n): t for n, t in base.items()}
    with pytest.raises(UserError, match=r"different parameters.*only in state dict: model\.extra\.weight.*model\.norm\.weight"):
        parameter_drift(renamed, base_dir)
    reshaped = {**base, "model.norm.weight": torch.zeros(3)}
    with pytest.raises(UserError, match=r"shapes differ.*model\.norm\.weight \(3,\) vs \(64,\)"):
        parameter_drift(reshaped, base_dir)


def test_bad_directories(base_dir, tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        parameter_drift(tmp_path / "missing", base_dir)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        parameter_drift(tmp_path, base_dir)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="is a LoRA adapter folder.*eksft merge"):
        parameter_drift(adapter, base_dir)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        parameter_drift(corrupt, base_dir)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.layers.12.mlp.up_proj.weight", "layer 12"),
        ("model.language_model.layers.3.self_attn.q_proj.weight", "layer 3"),
        ("transformer.h.0.attn.c_attn.weight", "layer 0"),
        ("model.embed_tokens.weight", "embeddings"),
        ("transformer.wte.weight", "embeddings"),
        ("lm_head.weight", "lm_head"),
        ("model.norm.weight", "final norm"),
        ("transformer.ln_f.weight", "final norm"),
        ("visual.merger.mlp.0.weight", "other"),
    ],
)
def test_groups(name, group):
    assert group_of(name) == group
