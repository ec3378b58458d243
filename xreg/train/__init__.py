"""Training: the thesis recipe on an institution's labelled radiographs.

``train(config, data, out)`` is the whole job; ``load_train_config`` reads a
recipe from ``configs/``.
"""

from xreg.train.config import TrainConfig, load_train_config
from xreg.train.loop import Callbacks, EpochLog
from xreg.train.run import TrainResult, default_run_dir, train

__all__ = ["Callbacks", "EpochLog", "TrainConfig", "TrainResult", "default_run_dir",
           "load_train_config", "train"]
