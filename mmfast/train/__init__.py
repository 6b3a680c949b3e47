"""The training engine: config, stages, checkpoints, metrics, distributed data parallel.

``fit_method(name, train, val, cfg, run_dir)`` trains a registered method (``mmfast.methods``)
and writes its run directory; ``load_model(run_dir)`` rebuilds the fitted model.
"""

from mmfast.train.api import fit_method, load_model, save_model
from mmfast.train.checkpoint import load_checkpoint, save_checkpoint
from mmfast.train.config import PRESETS, TrainConfig
from mmfast.train.engine import Stage, StepInfo, TrainContext, evaluate_accuracy, run_stage

__all__ = ["TrainConfig", "PRESETS", "fit_method", "load_model", "save_model", "Stage",
           "StepInfo", "TrainContext", "run_stage", "evaluate_accuracy", "save_checkpoint",
           "load_checkpoint"]
