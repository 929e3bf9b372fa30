"""Summarise a folder of runs: the same as the installed command ``guider-summarize``
(guider/reporting/summarize_cli.py), runnable from a checkout without installing.

    python scripts/summarize.py <sweep folder> [--out DIR] [--reference oracle]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guider.reporting.summarize_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
