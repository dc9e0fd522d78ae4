"""Where one tclean call's time went, read from CASA's own log of that call.

tclean times its own steps and logs them at priority INFO3 ("***Time for making PSF: 1.23 sec"),
so the worker lowers the log filter to INFO3 for its chunk and reads them back: initialising the
imager (opening and selecting the MS, defining the image, weighting), the PSF (and PB with the
standard gridder in cube mode), the dirty image's major cycle, minor and later major cycles,
restoring and pb-correcting. What tclean's own clock does not cover (task start, parameter
checks, writing history, closing tables, releasing CASA's caches) is ``other``. Chunks imaged with
casatools alone (casa_imager) time the same steps themselves, under the same names.
"""

from __future__ import annotations

import re

# tclean's message → our step name. Repeated steps (major/minor cycles) are summed.
STEPS = {
    "initializing imager and normalizers": "init_imager_and_weighting",
    "initializing deconvolver(s)": "init_deconvolver",
    "initializing iteration controller": "init_iteration_control",
    "making PSF and PB": "psf_and_pb",
    "making PSF": "psf",
    "making PB": "pb",
    "major cycle (calcres=T)": "dirty_major_cycle",
    "major cycle": "major_cycles",
    "minor cycle": "minor_cycles",
    "update mask": "mask",
    "restoring images": "restore",
    "pb-correcting images": "pbcor",
}
_TIMING = re.compile(r"\*\*\*Time (?:for|to) (.+?): ([0-9.]+) sec")


def tclean_step_seconds(log_text: str) -> dict[str, float]:
    """Seconds per step from a casalog file holding one tclean call's INFO3 messages."""
    steps: dict[str, float] = {}
    for match in _TIMING.finditer(log_text):
        name = STEPS.get(match.group(1), match.group(1).replace(" ", "_"))
        steps[name] = steps.get(name, 0.0) + float(match.group(2))
    return {k: round(v, 3) for k, v in steps.items()}


def with_other(steps: dict[str, float], task_seconds: float) -> dict[str, float]:
    """``steps`` plus ``other``: the rest of the task's wall time (what no step's clock covers)."""
    return dict(steps, other=round(max(0.0, task_seconds - sum(steps.values())), 3))
