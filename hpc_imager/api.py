"""``from hpc_imager import tclean``: a CASA script's tclean call, run channel-parallel on a site.

It takes tclean's own keywords, plus ``site=`` and the ``[parallel]`` and ``[run]`` settings of a
cube.toml as keywords, runs the same engine as ``submit`` and returns what serial tclean returns
(iterdone, stopcode, summaryminor ...), so a pipeline script changes one import line. Errors are the
CLI's, as exceptions: a :class:`hpc_imager.errors.UserError` with the CLI's one-line message and exit
status.

The driver runs in a child process (``python -m hpc_imager.api``) as ``submit`` does: the local
site's worker processes are spawned, and a spawned process re-runs the parent's main script, which
in a CASA script is the tclean call itself (measured: "Nanny failed to start" when the driver ran in
the script's own process). The child's terminal lines (progress) go to the script's terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import EXIT_INTERRUPTED, UserError


class TcleanFailed(UserError):
    """What ``submit`` would have said in one line, with the exit status it would have ended with."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def tclean(*, site: str = "local", resume: bool = False, **keywords) -> dict:
    """Image the cube tclean's ``keywords`` describe on ``site``; return serial tclean's return value.

    ``[parallel]`` keys (channels_per_task, workers, max_in_flight, retries, probe, iteration) and
    ``[run]`` keys (directory, keep_parts, fits, ...) may be given among the keywords; relative paths
    are taken from the current directory, as tclean takes them."""
    from .inputs.cube_spec import parse_cube_spec

    request = {"tables": _tables(keywords), "base": os.getcwd(), "site": site, "resume": resume}
    parse_cube_spec(request["tables"], Path.cwd())  # a mistyped keyword is raised here, before anything starts
    with tempfile.TemporaryDirectory(prefix="hpc_imager-tclean-") as scratch:
        answer = Path(scratch) / "answer.json"
        done = subprocess.run([sys.executable, "-m", "hpc_imager.api", str(answer)], input=json.dumps(request),
                              text=True, stdout=sys.stdout, stderr=sys.stderr)
        if not answer.exists():
            raise TcleanFailed(f"the driver ended without an answer (exit status {done.returncode})",
                               done.returncode or 1)
        result = json.loads(answer.read_text())
    if "error" in result:
        raise TcleanFailed(result["error"], result["exit_status"])
    return result["tclean_return"]


def _tables(keywords: dict) -> dict[str, dict]:
    """tclean's keywords and the [parallel] and [run] settings, sorted into cube.toml's tables."""
    from .inputs.cube_spec import ParallelParams, RunParams

    tables: dict[str, dict] = {"tclean": {}, "parallel": {}, "run": {}}
    for name, value in keywords.items():
        table = ("parallel" if name in ParallelParams.model_fields else "run" if name in RunParams.model_fields
                 else "tclean")
        tables[table][name] = list(value) if isinstance(value, tuple) else value
    return tables


def _drive(answer: Path) -> int:
    """The child: read the request on stdin, image the cube, write the answer (or the one-line error)."""
    request = json.loads(sys.stdin.read())
    try:
        from .imaging import casa_setup

        casa_setup.configure_offline()  # before anything imports casatools
        from .inputs.cube_spec import parse_cube_spec
        from .inputs.site_profile import load_site
        from .run.driver import image_cube

        spec = parse_cube_spec(request["tables"], Path(request["base"]))
        report = image_cube(spec, load_site(request["site"]), resume=request["resume"])
        result, status = {"tclean_return": report.get("tclean_return", {})}, 0
    except UserError as error:
        result, status = {"error": str(error).splitlines()[0], "exit_status": error.exit_status}, error.exit_status
    except KeyboardInterrupt:
        result = {"error": "interrupted; run again with resume=True to finish", "exit_status": EXIT_INTERRUPTED}
        status = EXIT_INTERRUPTED
    answer.write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(_drive(Path(sys.argv[1])))
