"""EKSFTConfig validation, and the recipes in configs/ (parsed as the command parses them)."""

import dataclasses
from pathlib import Path

import pytest
from trl import ModelConfig, TrlParser

from eksft.commands.sft import DataArguments
from eksft.objectives import ObjectiveParams
from eksft.trainer import EKSFTConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_RECIPES = ["eksft_qwen3_4b.yaml", "eksft_qwen3_8b.yaml", "eksft_qwen3_4b_lora.yaml"]


def test_every_objective_parameter_is_a_config_field_with_the_same_default_and_help():
    config_fields = {f.name: f for f in dataclasses.fields(EKSFTConfig)}
    for param in dataclasses.fields(ObjectiveParams):
        assert param.name in config_fields, param.name
        assert config_fields[param.name].default == param.default, param.name
        assert config_fields[param.name].metadata["help"] == param.metadata["help"] != "", param.name
    assert EKSFTConfig(output_dir="o", use_cpu=True).objective_params() == ObjectiveParams()
    assert list(config_fields)[0] == "output_dir" and EKSFTConfig("o", use_cpu=True).output_dir == "o"  # as SFTConfig


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rho": 1.5}, r"rho must be in \[0, 1\), got 1.5"),
        ({"lambda_entropy": -0.1}, r"lambda_entropy must be >= 0, got -0.1"),
        ({"combine": "xor"}, r"combine must be one of \('union', 'intersection'\), got 'xor'"),
        ({"eaft_top_k": 1}, r"eaft_top_k must be an integer >= 2, got 1"),
        ({"objective": "sft"}, r"objective must be one of nll, eksft, dft, .*mask_only; got 'sft'"),
        ({"loss_type": "sft"}, r"objective must be one of nll, eksft, .*; got loss_type='sft' \(the objective's option is"),
        ({"ref_model_mode": "shared"}, r"ref_model_mode must be one of auto, copy, adapter_disabled; got 'shared'"),
        ({"label_smoothing_factor": 0.1}, r"label_smoothing_factor is not supported"),
    ],
)
def test_bad_values_fail_when_the_config_is_built(values, message):
    with pytest.raises(ValueError, match=message):
        EKSFTConfig(output_dir="o", use_cpu=True, **values)


def parse_recipe(name: str, *extra: str):
    parser = TrlParser((DataArguments, EKSFTConfig, ModelConfig))
    # the paper recipes ask for bf16 on GPUs; --use_cpu lets this machine build the config
    return parser.parse_args_and_config(
        ["--config", str(CONFIGS / name), "--output_dir", "o", "--use_cpu", "true", *extra]
    )


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_hold_the_papers_hyper_parameters(name):
    data, config, model = parse_recipe(name)
    assert (config.objective, config.rho, config.lambda_entropy, config.lambda_kl) == ("eksft", 0.2, 0.05, 0.05)
    assert (config.num_train_epochs, config.lr_scheduler_type.value, config.warmup_steps) == (8, "cosine", 0.01)
    assert (config.weight_decay, config.adam_beta2, config.bf16, config.max_length >= 8192) == (0.1, 0.95, True, True)
    assert (data.dataset_name, data.dataset_format, data.max_rows) == ("Elliott/Openr1-Math-46k-8192", "openr1", 3000)
    assert model.model_name_or_path.startswith("Qwen/Qwen3-")
    if model.use_peft:
        assert config.ref_model_mode == "adapter_disabled"
    else:
        assert config.learning_rate == 1e-5 and config.ref_model_mode == "copy"


def test_flags_override_the_recipe():
    _, config, _ = parse_recipe("tiny_cpu.yaml", "--rho", "0.3", "--objective", "dft")
    assert (config.rho, config.objective, config.bf16) == (0.3, "dft", False)


def test_the_old_loss_type_flag_still_selects_the_objective():
    with pytest.warns(FutureWarning, match="use objective='asft'"):
        _, config, _ = parse_recipe("tiny_cpu.yaml", "--objective", "eksft", "--loss_type", "asft")
    assert (config.objective, config.loss_type) == ("asft", "nll")


@pytest.mark.parametrize("name, kind", [("deepspeed_zero3", "DEEPSPEED"), ("fsdp", "FSDP"), ("multi_gpu", "MULTI_GPU")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
