"""Early stopping on a validation score (lower is better)."""

from __future__ import annotations

import math


class EarlyStopping:
    """Stop when the score has not improved for ``patience`` epochs.

    ``update(score, epoch)`` records one validation score and returns whether it
    improved on the best so far by more than ``min_delta``; ``should_stop`` is then
    true once ``patience`` consecutive epochs brought no improvement.  A
    non-finite score never counts as an improvement.  ``patience=None`` never stops.
    """

    def __init__(self, patience: int | None, min_delta: float = 0.0):
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be a positive number of epochs, got {patience!r}")
        self.patience = None if patience is None else int(patience)
        self.min_delta = float(min_delta)
        self.best_score = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, score: float, epoch: int) -> bool:
        score = float(score)
        if math.isfinite(score) and score < self.best_score - self.min_delta:
            self.best_score = score
            self.best_epoch = int(epoch)
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def describe(self) -> str:
        """One line for logs: best score/epoch and the patience counter."""
        limit = "inf" if self.patience is None else str(self.patience)
        return (f"best {self.best_score:.6g} at epoch {self.best_epoch}, "
                f"{self.bad_epochs}/{limit} epochs without improvement")

    def state_dict(self) -> dict:
        return {"patience": self.patience, "min_delta": self.min_delta,
                "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.patience = state["patience"]
        self.min_delta = float(state["min_delta"])
        self.best_score = float(state["best_score"])
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
