"""Reading training data in its usual layouts, converting it for TRL, and reporting what was kept and why."""

import json

import pytest
from transformers import AutoTokenizer

from eksft.data import convert_rows, detect_layout, load_training_data, read_json
from eksft.errors import UserError

USER, ASSISTANT = {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}
SYSTEM = {"role": "system", "content": "Think step by step."}

# one row of each layout, and what it becomes
LAYOUTS = {
    "messages": ({"messages": [USER, ASSISTANT]}, {"messages": [USER, ASSISTANT]}),
    "sharegpt": (  # the published EKSFT data: role/value tags
        {
            "conversations": [
                {"role": "user", "value": USER["content"]},
                {"role": "assistant", "value": ASSISTANT["content"]},
            ]
        },
        {"messages": [USER, ASSISTANT]},
    ),
    "sharegpt_from": (
        {
            "system": SYSTEM["content"],
            "conversations": [
                {"from": "human", "value": USER["content"]},
                {"from": "gpt", "value": ASSISTANT["content"]},
            ],
        },
        {"messages": [SYSTEM, USER, ASSISTANT]},
    ),
    "prompt_completion": (
        {"prompt": USER["content"], "completion": ASSISTANT["content"]},
        {"prompt": [USER], "completion": [ASSISTANT]},
    ),
    "prompt_completion_messages": (
        {"prompt": [SYSTEM, USER], "completion": [ASSISTANT]},
        {"prompt": [SYSTEM, USER], "completion": [ASSISTANT]},
    ),
    "alpaca": (
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {
            "messages": [
                {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                {"role": "assistant", "content": "5"},
            ]
        },
    ),
    "alpaca_no_input": (
        {"instruction": USER["content"], "input": "", "output": ASSISTANT["content"]},
        {"messages": [USER, ASSISTANT]},
    ),
    "openr1": (  # Elliott/Openr1-Math-46k-8192: prompt = [system, user], target = [assistant], plus metadata
        {
            "data_source": "openr1",
            "prompt": [SYSTEM, USER],
            "target": [ASSISTANT],
            "reward_model": {"ground_truth": "5", "style": "rule"},
        },
        {"prompt": [SYSTEM, USER], "completion": [ASSISTANT]},
    ),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_is_detected_and_converted(name):
    row, expected = LAYOUTS[name]
    examples, report = convert_rows([row])
    assert report.layout == name.split("_from")[0].replace("_no_input", "").replace("_messages", "")
    assert examples == [(1, expected)]


def test_system_prompt_is_added_to_conversations_without_one():
    rows = [{"messages": [USER, ASSISTANT]}, {"messages": [SYSTEM, USER, ASSISTANT]}]
    examples, _ = convert_rows(rows, system_prompt="Be brief.")
    assert [e["messages"][0]["content"] for _, e in examples] == ["Be brief.", SYSTEM["content"]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_files_of_every_kind_load_the_same(tmp_path, tokenizer):
    import datasets

    rows = [{"messages": [USER, {**ASSISTANT, "content": f"answer {i}"}]} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    write_jsonl(tmp_path / "a.jsonl", rows)
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "a.parquet")
    loaded = [
        load_training_data(str(tmp_path / f"a.{ext}"), tokenizer)[0].to_list() for ext in ("json", "jsonl", "parquet")
    ]
    assert loaded[0] == loaded[1] == loaded[2] == rows


def test_a_directory_loads_through_datasets_like_a_hub_id(tmp_path, tokenizer):
    import datasets

    rows = [{"prompt": [USER], "target": [{**ASSISTANT, "content": f"answer {i}"}]} for i in range(3)]
    (tmp_path / "hub").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "hub" / "train-00000.parquet")
    dataset, report = load_training_data(str(tmp_path / "hub"), tokenizer, split="train")
    assert report.layout == "openr1" and dataset[2]["completion"][0]["content"] == "answer 2"


def test_unsupported_file_type(tmp_path, tokenizer):
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"unknown dataset file type '.csv'"):
        load_training_data(str(tmp_path / "d.csv"), tokenizer)


def test_report_counts_kept_truncated_and_dropped_rows(tmp_path, tokenizer):
    long_answer = {"role": "assistant", "content": "very long answer " * 40}
    rows = [
        {"messages": [USER, ASSISTANT]},  # kept
        {"messages": [USER, {"role": "assistant", "content": "  "}]},  # empty response
        {"messages": [USER]},  # no response
        {"messages": [{"role": "user", "content": "long question " * 60}, ASSISTANT]},  # prompt > max_length
        {"messages": [USER, long_answer]},  # kept, truncated
    ]
    dataset, report = load_training_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, max_length=64)
    assert len(dataset) == report.kept == 2 and report.truncated == 1 and report.rows_read == 5
    assert dict(report.dropped) == {
        "empty response": 1,
        "no assistant response": 1,
        "prompt longer than max_length=64 tokens": 1,
    }
    assert report.dropped_rows == {
        "empty response": [2],
        "no assistant response": [3],
        "prompt longer than max_length=64 tokens": [4],
    }
    text = str(report)
    assert "5 rows read, 2 kept, 1 of them truncated to max_length=64, 3 dropped" in text
    assert "dropped 1: empty response (rows 2)" in text


def test_max_rows_after_a_seeded_shuffle_keeps_source_row_numbers(tmp_path, tokenizer):
    rows = [{"messages": [USER, {"role": "assistant", "content": f"{i}" if i != 7 else ""}]} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    first, _ = load_training_data(path, tokenizer, max_rows=4, shuffle_seed=3)
    again, report = load_training_data(path, tokenizer, max_rows=10, shuffle_seed=3)
    assert first.to_list() == again.to_list()[: len(first)]
    assert report.dropped_rows == {"empty response": [8]}


# ---- bad input: one clear UserError naming the file, line or row, field and value


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": []}\n{"messages": [}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2: not a JSON object \(invalid JSON"):
        read_json(path)


def test_malformed_json_array_names_file_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"messages": []},\n  {"messages": ]\n]')
    with pytest.raises(UserError, match=r"d\.json:3:16: invalid JSON"):
        read_json(path)


def test_missing_file(tokenizer):
    with pytest.raises(UserError, match="dataset file not found: .*nowhere.jsonl"):
        load_training_data("nowhere.jsonl", tokenizer)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "hello"}], r"cannot tell the dataset layout from its columns \['text'\]"),
        (
            [{"messages": [USER, ASSISTANT]}, {"messages": [{"role": "robot", "content": "beep"}, ASSISTANT]}],
            r"row 2: unknown role 'robot' in messages\[0\]",
        ),
        (
            [{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}],
            r"row 1: unknown role 'bot' in conversations\[1\] \(known: human, user, gpt",
        ),
        ([{"instruction": "hi", "output": "yo"}, {"instruction": "hi"}], r"row 2: missing field 'output'"),
        (
            [{"prompt": "hi", "completion": "yo"}, {"prompt": "hi", "completion": 3}],
            r"row 2: completion must be a list of messages, got int",
        ),
        (
            [{"messages": [USER, {"role": "assistant", "content": ["parts"]}]}],
            r"row 1: messages\[1\].content must be a string, got list",
        ),
        ([{"prompt": [USER], "target": "not a list"}], r"row 1: target must be a list of messages, got a string"),
        ([], "the dataset is empty"),
    ],
)
def test_bad_rows_are_errors_naming_row_and_field(rows, message):
    with pytest.raises(UserError, match=message):
        convert_rows(rows)


def test_bad_rows_can_be_dropped_and_counted():
    rows = [{"messages": [USER, ASSISTANT]}, {"messages": [{"role": "robot", "content": "beep"}, ASSISTANT]}]
    examples, report = convert_rows(rows, bad_rows="drop")
    assert len(examples) == 1 and report.dropped_rows == {
        "unknown role 'robot' in messages[0] (known: system, user, assistant, tool)": [2]
    }


def test_unknown_layout_name():
    with pytest.raises(UserError, match="unknown dataset layout 'csv'; known layouts: auto, messages"):
        convert_rows([{"messages": [USER, ASSISTANT]}], layout="csv")


def test_nothing_left_after_filtering(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "user", "content": "long question " * 60}, ASSISTANT]}]
    with pytest.raises(UserError, match="no rows left to train on after filtering"):
        load_training_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, max_length=16)


def test_detect_layout_prefers_openr1_over_prompt_completion():
    assert detect_layout(["prompt", "target", "completion"]) == "openr1"
