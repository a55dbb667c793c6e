"""Deprecated: the names of `vae_jax.runner` before it was split by what it does, kept through 0.4 (removed in 0.5).

Use `vae_jax.trainer.fit` (was `train_and_evaluate`), `vae_jax.readback` (`evaluate_checkpoint`, `evaluate_gaps`,
`write_gaps_csv`, `write_sample_figures`), `vae_jax.resolve.open_run` (was `load_checkpoint`) and `vae_jax.workdir`
(the file names). docs/api.md lists the changes.
"""

from vae_jax.readback import evaluate_checkpoint, evaluate_gaps, write_gaps_csv, write_sample_figures
from vae_jax.trainer import fit as train_and_evaluate
from vae_jax.workdir import EVAL_FILE, METRICS_FILE, TENSORBOARD_DIR

__all__ = ["EVAL_FILE", "METRICS_FILE", "TENSORBOARD_DIR", "evaluate_checkpoint", "evaluate_gaps",
           "train_and_evaluate", "write_gaps_csv", "write_sample_figures"]
