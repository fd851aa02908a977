"""Training: config, data pipeline, loop, checkpoints and resume, distributed (torchrun + DDP).

    from segfpn.training import load_config, train
    result = train(load_config("configs/synthetic_panoptic.yaml"))
"""

from segfpn.training.config import (ConfigError, DataConfig, DatasetConfig, InitConfig, SolverConfig,
                                    SyntheticSetConfig, TrainConfig, load_config)
from segfpn.training.trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = ["ConfigError", "DataConfig", "DatasetConfig", "InitConfig", "SolverConfig", "SyntheticSetConfig",
           "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "load_config", "train"]
