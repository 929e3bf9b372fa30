"""The training loop: epochs, early stopping on validation, checkpoints, resume."""

from .loop import FitResult, NonFiniteLoss, ResumeRefused, check_resumable, fit

__all__ = ["FitResult", "NonFiniteLoss", "ResumeRefused", "check_resumable", "fit"]
