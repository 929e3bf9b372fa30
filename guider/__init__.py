"""guider: denoising multi-modal recommender systems, as a Hydra-configured experiment CLI."""

__version__ = "0.1.0"
