"""The pipeline around the pure verbs: rounds, checkpoints, ``--resume``, fine-tuning,
evaluation and run directories, shared by every command and the recipe runner.

The verbs (``prune``, ``quantize``, ``factorize``, ``distill``) take a model and return a
result; nothing they do touches the disk. What a long job needs on top lives here::

    from brainsurgeon.pipeline import FinetuneConfig, finetune, prune_run, save_child
    result = prune_run(model, config, data, out_dir="runs/p", resume=True)
    finetune(model, data, FinetuneConfig(epochs=2))
    save_child(model, run, "runs/q", step={"step": "factorize"}, data=data)
"""

from .finetune import FinetuneConfig, finetune
from .prune import prune_run
from .results import data_config, final_metrics, save_child, save_result
from .store import ROUNDS_DIR, RoundStore, check_out_dir

__all__ = [
    "ROUNDS_DIR",
    "FinetuneConfig",
    "RoundStore",
    "check_out_dir",
    "data_config",
    "final_metrics",
    "finetune",
    "prune_run",
    "save_child",
    "save_result",
]
