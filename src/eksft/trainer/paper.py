"""The paper that the model card of every model eksft trains cites (TRL's ``_paper`` convention of its trainers).

The entry holds what the project's sources record (docs/design.md: arXiv 2605.29303, Liu et al., 2026); the title is
the method's name.
"""

EKSFT_CITATION = """\
@misc{liu2026eksft,
    title        = {{Entropy-KL Selective Fine-Tuning (EKSFT)}},
    author       = {Liu and others},
    year         = 2026,
    eprint       = {arXiv:2605.29303},
}"""

EKSFT_PAPER = {"title": "Entropy-KL Selective Fine-Tuning (EKSFT)", "id": "2605.29303", "citation": EKSFT_CITATION}
