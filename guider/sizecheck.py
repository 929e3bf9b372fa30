"""Early size checks: estimate the bytes of a large structure *before* building it, and fail at
once with a message that names the knob reducing it, instead of being killed by the kernel's
out-of-memory killer halfway through a run.

The budget is the memory available right now: ``MemAvailable`` from ``/proc/meminfo`` for host
memory, ``torch.cuda.mem_get_info`` for a CUDA device. ``GUIDER_MEMORY_LIMIT`` overrides it (bytes,
or a number with a K/M/G/T suffix in powers of 1024, e.g. ``12G``; ``off`` disables every check).
Where neither /proc/meminfo nor the override exists (macOS), host checks are skipped.

Every estimate counts the structure itself and the temporaries known to live next to it (a
dense score block and its top-k workspace, a COO edge list and its coalesced copy, ...). They are
deliberately simple, so they can be wrong by a small factor; their job is to turn an impossible
request (10^9 interactions on a 24 GiB machine) into a clear error in milliseconds, not to
predict the peak to the megabyte. The checks are called where the structures are built:

===========================================  ==============================================
structure                                    knob named in the message
===========================================  ==============================================
synthetic generator arrays                   dataset.synthetic.n_interactions / n_users ...
dense score block of the evaluator           eval.batch_users
kNN similarity block (FREEDOM, MGCN, AMSC)   backbone.knn_block_size / denoise.amsc.knn_block
user-item adjacency                          fewer interactions (the dataset)
embedding tables and their optimiser state   backbone.embedding_dim / denoise.teacher.embedding_dim
GUIDER's distillation candidates             denoise.kd.items / denoise.kd.users
===========================================  ==============================================
"""

from __future__ import annotations

import os
import re

ENV = "GUIDER_MEMORY_LIMIT"
MEMINFO = "/proc/meminfo"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeError(ValueError, MemoryError):
    """A structure would not fit in the memory available; the message names the knob."""


def parse_bytes(text: str) -> int:
    """'123' -> 123, '512M' -> 512 MiB, '1.5G' -> 1.5 GiB (powers of 1024; a trailing B or iB is
    allowed: '12GiB', '12GB')."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"{ENV}={text!r}: expected bytes or a number with a K/M/G/T suffix "
                         f"(e.g. 12G), or 'off'")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def mem_available(meminfo: str = MEMINFO) -> int | None:
    """MemAvailable in bytes from /proc/meminfo, or None where the file does not exist."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in kB
    except OSError:
        return None
    return None


def budget(device: object = None) -> tuple[int | None, str]:
    """(bytes available, where that number comes from); (None, ...) = do not check."""
    override = os.environ.get(ENV, "").strip()
    if override.lower() in ("off", "none", "false", "no"):
        return None, f"{ENV}={override}"
    if override:
        return parse_bytes(override), f"{ENV}={override}"
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(str(device)))
            return int(free), "free CUDA memory"
    return mem_available(), "MemAvailable in /proc/meminfo"


def check_size(what: str, nbytes: float, knob: str, device: object = None) -> None:
    """Raise SizeError when ``nbytes`` (the estimate for ``what``) exceeds the memory available.

    ``knob`` says what reduces it (e.g. "eval.batch_users"); the message also says how to
    override the budget."""
    limit, source = budget(device)
    if limit is None or nbytes <= limit:
        return
    raise SizeError(
        f"{what} would need about {format_bytes(nbytes)}, but only {format_bytes(limit)} is "
        f"available ({source}). Reduce it with {knob}; if the estimate is wrong for this "
        f"machine, set {ENV} (e.g. {ENV}=64G, or {ENV}=off to disable the check)."
    )
