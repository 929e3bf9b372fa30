"""The training loop: epochs, early stopping on validation, checkpoints, resume."""

from .loop import FitResult, NonFiniteLoss, fit

__all__ = ["FitResult", "NonFiniteLoss", "fit"]
