"""The NGC5921 demo: its measurement set from casadata's bundled UVFITS, and a ready cube.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import casa_setup

DEMO_CUBE = Path(__file__).with_name("ngc5921.toml")


def make_ngc5921_ms(vis: Path) -> Path:
    """Import casadata's demo/NGC5921.fits into ``vis`` unless it is already there (idempotent)."""
    vis = Path(vis)
    if (vis / "table.dat").exists():
        return vis
    casa_setup.configure_offline()
    from casatasks import importuvfits

    partial = vis.with_name(vis.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from an interrupted import
    importuvfits(fitsfile=str(casa_setup.casadata_path() / "demo" / "NGC5921.fits"), vis=str(partial))
    partial.rename(vis)
    return vis


def prepare_demo(directory: Path) -> Path:
    """Put the demo cube.toml and its MS in ``directory``; return the cube.toml's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cube_toml = directory / "cube.toml"
    if not cube_toml.exists():
        shutil.copyfile(DEMO_CUBE, cube_toml)
    make_ngc5921_ms(directory / "ngc5921.ms")
    return cube_toml
