"""The NGC5921 demo: its measurement set from casadata's bundled UVFITS, and a ready cube.toml.

CASA's messages while the MS is imported go to a log file, not the terminal: casadata's leap-second
table makes casacore print three SEVERE "out of date" lines on every import, which do no harm
offline but hide real errors and frighten a first-time user. A real failure of the import raises
(importuvfits re-raises what ms.fromfits raised) and is reported in one line naming that log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import RunFailed
from .imaging import casa_setup
from .logs import casa_messages_to

DEMO_CUBE = Path(__file__).with_name("ngc5921.toml")


class DemoDataError(RunFailed):
    """The demo MS could not be made; the message names the CASA log that says why."""


def make_ngc5921_ms(vis: Path, casa_log: Path | None = None) -> Path:
    """Import casadata's demo/NGC5921.fits into ``vis`` unless it is already there (idempotent).

    CASA's messages go to ``casa_log`` (default: beside the MS), never to the terminal."""
    vis = Path(vis)
    if (vis / "table.dat").exists():
        return vis
    casa_setup.configure_offline()
    from casatasks import importuvfits

    casa_log = Path(casa_log or vis.with_name(vis.name + ".import.casa.log"))
    partial = vis.with_name(vis.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from an interrupted import
    try:
        with casa_messages_to(casa_log):
            importuvfits(fitsfile=str(casa_setup.casadata_path() / "demo" / "NGC5921.fits"), vis=str(partial))
    except Exception as error:
        raise DemoDataError(f"cannot make {vis} from casadata's NGC5921.fits: {str(error).splitlines()[0]}"
                            f" (CASA's log: {casa_log})") from None
    partial.rename(vis)
    return vis


def prepare_demo(directory: Path) -> Path:
    """Put the demo cube.toml and its MS in ``directory``; return the cube.toml's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cube_toml = directory / "cube.toml"
    if not cube_toml.exists():
        shutil.copyfile(DEMO_CUBE, cube_toml)
    from .inputs.cube_spec import load_cube_spec

    make_ngc5921_ms(directory / "ngc5921.ms", load_cube_spec(cube_toml).run_directory / "logs" / "import.casa.log")
    return cube_toml
