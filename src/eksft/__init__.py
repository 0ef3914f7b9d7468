"""EKSFT: Entropy-KL Selective Fine-Tuning.

The objective lives in ``eksft.objectives`` (formula in ``eksft/objectives/eksft.py``), the token statistics in
``eksft.stats`` and the token selection in ``eksft.selection``.
"""

__version__ = "0.1.0"
