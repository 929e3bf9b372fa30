"""Data preparation: public raw releases -> MMRec-format dataset folders (``guider-prepare``).

Subcommands ``microlens``, ``amazon`` and ``generic`` (one module each) share the steps in
``common`` (de-duplication, k-core, per-user split with MMRec's counts, id maps, writers, README)
and the encoders in ``encoders`` (all-MiniLM-L6-v2 text, EfficientNet-Lite0 images; optional
extras ``.[text]`` and ``.[image]``). See docs/prepare.md.
"""

from .cli import main
from .common import PrepareError, assign_split, kcore, split_counts

__all__ = ["main", "PrepareError", "assign_split", "kcore", "split_counts"]
