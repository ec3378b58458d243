"""The model: label sets, model cards, networks, checkpoints and preprocessing.

``labels`` and ``card`` are torch-free (the slim sort install imports them);
``models`` (with ``efficientnet_lite``), ``checkpoint`` and ``transforms``
need PyTorch. Nothing is re-exported here, so importing this package never
imports torch.
"""
