"""The training progress bar."""

from __future__ import annotations

from typing import Any

import jax


class ProgressBar:
    """The training progress bar (tqdm), moved by the compiled epoch's host callback on the CPU and once per epoch
    elsewhere."""

    def __init__(self, total_steps: int, first_step: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=first_step, desc="train", unit="step",
                        disable=not enabled or jax.process_index() != 0, dynamic_ncols=True)
        self.epoch, self.epoch_start = 0, first_step

    def start_epoch(self, epoch: int, first_step: int) -> None:
        self.epoch, self.epoch_start = epoch, first_step

    def report(self, steps_done: jax.Array, running_loss: jax.Array) -> None:
        """`train.train_epoch`'s `progress` callback."""
        self.bar.update(self.epoch_start + int(steps_done) - self.bar.n)
        self.bar.set_postfix(epoch=self.epoch, loss=f"{float(running_loss):.2f}", refresh=False)

    def end_epoch(self, step: int, record: dict[str, Any]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(epoch=record["epoch"], train_nelbo=f"{record['train_nelbo']:.2f}",
                             val_nelbo=f"{record['val_nelbo']:.2f}")
