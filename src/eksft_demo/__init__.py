"""The demo application: the paper in miniature on a tiny model (``eksft demo``), and the SFT comparison on a real
model (``eksft demo --profile real``). It runs on top of the library (``eksft``) and is not part of it: users import
``eksft``; the toy world and its tokenizer, which tests and users build on, are ``eksft.demo``.

Modules: ``profiles`` (sizes), ``world_data`` (the data of each stage), ``base_model`` (the cached tiny base),
``progress`` (progress lines with an ETA), ``stages`` (SFT, GRPO, evaluation of one model), ``pipeline``
(``run_demo``: the whole run), ``report`` (report.md); ``real`` / ``real_data`` / ``real_texts`` / ``real_report``
for the real-model profile.
"""
