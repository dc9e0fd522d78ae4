"""Offline CASA: point casaconfig at casadata's bundled measures before casatools is imported.

casaconfig reads its site config once, when casatools is first imported, from the file named by
``CASASITECONFIG``. Without it casatools tries to download measures data at import, which fails on
clusters with no internet. Every process that imports casatools (the driver, every dask worker)
calls :func:`configure_offline` first; the environment variable it sets is inherited by worker
processes, and batch workers call it again on their own node.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

CONFIG_ENV = "CASASITECONFIG"
DATA_ENV = "HPC_IMAGER_CASA_DATA"  # a site's own CASA data on its nodes, instead of casadata's


def casadata_path() -> Path:
    """casadata's data folder (measures, demo data), found without importing casatools."""
    import casadata

    return Path(casadata.datapath)


def _config_text(logfile: Path) -> str:
    measures = os.environ.get(DATA_ENV) or str(casadata_path())
    return (
        "# Written by hpc_imager: offline CASA, measures from the casadata package or the site's data.\n"
        f"measurespath = {measures!r}\n"
        "measures_auto_update = False\n"
        "data_auto_update = False\n"
        f"logfile = {str(logfile)!r}\n"
        "telemetry_enabled = False\n"
        "crashreporter_enabled = False\n"
    )


def configure_offline(config_dir: Path | None = None) -> Path:
    """Write the site config (once per content) and export CASASITECONFIG; return its path.

    Must run before the first ``import casatools`` in this process; afterwards it is too late and
    we say so rather than let casatools reach for the network.
    """
    if "casatools" in sys.modules and os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if "casatools" in sys.modules:
        raise RuntimeError("casatools was imported before hpc_imager could configure it for offline use")
    directory = config_dir or Path(tempfile.gettempdir()) / f"hpc_imager-{os.getuid()}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "casasiteconfig.py"
    text = _config_text(directory / "casa.log")
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    os.environ[CONFIG_ENV] = str(path)
    return path


_casa_log = None  # casa_log()'s sink where casatasks is not loaded


def casa_log():
    """The process's CASA log sink: casatasks' own where casatasks is loaded (it makes one global sink
    at import), else one made from casatools alone, so a worker need not import casatasks to log."""
    if "casatasks" in sys.modules:
        from casatasks import casalog

        return casalog
    global _casa_log
    if _casa_log is None:
        from casatools import logsink

        _casa_log = logsink()
        _casa_log.setglobal(True)
    return _casa_log

