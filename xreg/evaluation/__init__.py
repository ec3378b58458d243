"""Evaluation: scoring checkpoints on labelled films, reports, calibration.

``evaluate`` (one film per item) and ``pairs`` (hip pairs) collect a model's
probabilities through the inference path; ``metrics`` and ``sorting`` score
them (the thesis's tables; the folders ``xreg sort`` would choose);
``report`` writes Markdown and plots; ``calibrate`` sets ``min_confidence``.
Submodules are imported on use, so importing this package costs nothing.
"""
