"""eksft's accuracy reward as an OpenRLHF reward file.

OpenRLHF loads ``reward_func`` from a ``.py`` file given by path:
``--reward.remote_url examples/openrlhf_reward.py`` (``--remote_rm_url`` in releases before its dotted options).
``eksft`` must be installed in the environment of OpenRLHF's workers. See ``eksft.rewards.openrlhf_reward_func``.
"""

from __future__ import annotations

from eksft.rewards import openrlhf_reward_func as reward_func

__all__ = ["reward_func"]
