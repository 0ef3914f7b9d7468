"""GRPO rewards: TRL's calling convention, plain and conversational completions, agreement with grading."""

from __future__ import annotations

from eksft.grading import is_correct
from eksft.rewards import accuracy_reward, completion_text, format_reward


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_accuracy_reward_plain_and_conversational() -> None:
    plain = [r"so \boxed{\frac12}", r"so \boxed{3}", "no answer", r"<think>\boxed{2}</think> hmm"]
    answers = ["0.5", "4", "1", "2"]
    expected = [1.0, 0.0, 0.0, 0.0]
    assert accuracy_reward(plain, answer=answers) == expected
    # as TRL passes them: the completion is the assistant turn, with extra keyword arguments
    conversational = [_chat(text) for text in plain]
    assert accuracy_reward(conversational, answer=answers, prompts=[[]] * 4, trainer_state=None) == expected


def test_accuracy_reward_takes_the_last_message_and_text_parts() -> None:
    history = [{"role": "assistant", "content": r"\boxed{1}"}, {"role": "assistant", "content": r"\boxed{2}"}]
    parts = [
        {"role": "assistant", "content": [{"type": "text", "text": "so "}, {"type": "text", "text": r"\boxed{7}"}]}
    ]
    assert completion_text(history) == r"\boxed{2}"
    assert completion_text(parts) == r"so \boxed{7}"
    assert completion_text([]) == ""
    assert accuracy_reward([history, history, parts], answer=["2", "1", 7]) == [1.0, 0.0, 1.0]


def test_accuracy_reward_agrees_with_is_correct() -> None:
    pairs = [
        (r"\boxed{033}", "33"),
        (r"\boxed{\dfrac12}", "0.5"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \frac{\pi}{2})"),
        (r"\boxed{(\frac{\pi}{2}, 3)}", r"(3, \frac{\pi}{2})"),
        (r"\boxed{\text{(B)}}", "B"),
        (r"\boxed{\text{(B)}}", "C"),
        (r"<think>\boxed{4}</think>\boxed{5}", "4"),
        (r"\boxed{x = 3}", "3"),
        ("", "3"),
        (r"\boxed{\{1, 2\}}", "2, 1"),
    ]
    completions = [c for c, _ in pairs]
    answers = [a for _, a in pairs]
    expected = [1.0 if is_correct(c, a) else 0.0 for c, a in pairs]
    assert accuracy_reward(completions, answer=answers) == expected
    assert accuracy_reward([_chat(c) for c in completions], answer=answers) == expected
    assert 0 < sum(expected) < len(expected)


def test_format_reward() -> None:
    texts = [
        r"so \boxed{3}.",
        r"<think>\boxed{1}</think> so \boxed{3}.",
        "no box",
        r"\boxed{1} or \boxed{2}",
        r"<think>\boxed{1}</think> no box after thinking",
        r"\boxed{}",
        r"\boxed{\frac{1}{2}}",
    ]
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert format_reward(texts) == expected
    assert format_reward([_chat(t) for t in texts], prompts=[[]] * len(texts)) == expected
