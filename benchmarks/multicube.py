"""Several cubes in one submission against the same cubes one after another (``bench.py --only multicube``).

The cubes are NGC5921's channels cut into ``n`` spectral windows (as an ALMA target's four spws), each
its own cube.toml and run directory. One after another, each submission starts its own workers and
its last chunks leave workers idle; in one submission (``submit a.toml b.toml ...``) the workers start
once and one cube's chunks fill what another's tail leaves. Both orders make the same cubes: the
benchmark checks every product's planes between the two (their equality to serial tclean is the
tests' concern, tests/test_multicube.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

NGC5921_CHANNELS = 63
PRODUCTS = ("image", "residual", "psf", "pb")


def window_tomls(base: dict, n: int, channels_per_task: int, work: Path) -> list[Path]:
    """``n`` cube.tomls, one per window of NGC5921's channels (the last ones left out when 63 % n)."""
    import tomlkit

    width = NGC5921_CHANNELS // n
    tomls = []
    for i in range(n):
        directory = work / f"spw{i}"
        directory.mkdir(parents=True, exist_ok=True)
        cube = tomlkit.document()
        cube["tclean"] = dict(base, imagename=str(directory / "cube"), start=i * width, width=1, nchan=width)
        cube["parallel"] = {"workers": 2, "channels_per_task": channels_per_task}
        toml = directory / "cube.toml"
        toml.write_text(tomlkit.dumps(cube))
        tomls.append(toml)
    return tomls


def _products(toml: Path) -> dict[str, object]:
    import numpy as np
    from casatools import image

    found = {}
    for product in PRODUCTS:
        ia = image()
        ia.open(str(toml.parent / f"cube.{product}"))
        try:
            found[product] = np.array(ia.getchunk())
        finally:
            ia.done()
    return found


def _clear(tomls: list[Path]) -> None:
    for toml in tomls:
        for path in toml.parent.glob("cube.*"):
            if path.is_dir():
                shutil.rmtree(path)


def compare(base: dict, n: int, channels_per_task: int, work: Path,
            submit: Callable[[list[Path], Path], float]) -> dict:
    """Wall seconds of the ``n`` window cubes submitted one after another, then together
    (``submit(tomls, log)``: one ``hpc_imager submit`` process, its wall time), and the largest
    difference between the two runs' products, as a fraction of each plane's peak."""
    import numpy as np

    tomls = window_tomls(base, n, channels_per_task, work / f"multicube-{n}")
    entry: dict = {"cubes": n, "channels_each": NGC5921_CHANNELS // n, "channels_per_task": channels_per_task,
                   "imsize": base["imsize"], "niter": base.get("niter", 0), "load_before": round(os.getloadavg()[0], 2)}
    entry["one_after_another_seconds"] = [round(submit([toml], toml.parent / "alone.log"), 2) for toml in tomls]
    alone = [_products(toml) for toml in tomls]
    _clear(tomls)
    entry["load_between"] = round(os.getloadavg()[0], 2)
    entry["one_submission_seconds"] = round(submit(tomls, tomls[0].parent.parent / "together.log"), 2)
    entry["load_after"] = round(os.getloadavg()[0], 2)
    worst = 0.0
    for toml, before in zip(tomls, alone):
        for product, pixels in _products(toml).items():
            peak = np.maximum(np.abs(before[product]).max(axis=(0, 1, 2)), 1e-30)
            worst = max(worst, float((np.abs(pixels - before[product]).max(axis=(0, 1, 2)) / peak).max()))
    entry["max_plane_difference_between_the_two"] = worst
    total = sum(entry["one_after_another_seconds"])
    entry["one_after_another_total_seconds"] = round(total, 2)
    entry["ratio_one_submission_over_one_after_another"] = round(entry["one_submission_seconds"] / total, 3)
    return entry
