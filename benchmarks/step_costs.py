"""Where a whole-cube iteration step's time goes: re-opening a chunk against imaging it.

    python benchmarks/step_costs.py --ms ngc5921.ms --out step-costs.json [--imsize 1024 --niter 300]

Each step of whole-cube iteration (``imaging/cycle_tasks.py``) opens the chunk's CASA tools afresh,
from the previous cycle's images copied to a scratch folder, because a dask task keeps no state. A
stateful step (the chunk's imager and deconvolver kept alive in one worker, issue 19) would skip the
re-opening but still grid and deconvolve. To tell the two apart this runs every chunk's steps one
after the other in this one process (``iteration.run_in_process``, the code the workers run) with
every CASA call of a step timed, and sorts the seconds into what serial tclean's one imager does
too (minor cycle, major cycle, setupmask and the initminorcycle after it) and what only a fresh
step does (copying the previous cycle's images, opening the imager and deconvolver, the
initminorcycle that rebuilds the deconvolver's statistics, putting back the kept imaging weights,
closing and releasing the tools, the rename). One OpenMP thread, as a dask worker has.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Which timed call is which: done by a stateful step as well, or only because the step is fresh.
ALSO_STATEFUL = {"executeminorcycle", "major cycle (executemajorcycle)", "setupmask", "initminorcycle after setupmask",
                 "make_psf_and_pb", "restore", "mask total (reads part.mask)", "keep imaging weights"}


class _Timer:
    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # step kind -> part -> s
        self.kind = "?"

    @contextlib.contextmanager
    def part(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[self.kind][name] += time.perf_counter() - started


def instrument(timer: _Timer) -> None:
    """Wrap the calls a step makes (module attributes the steps look up at call time)."""
    from hpc_imager.imaging import casa_imager, cycle_tasks

    def timed(owner, attribute: str, name: str):
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            with timer.part(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapper)

    tools = casa_imager.ImagerTools
    timed(tools, "open_imager", "open imager (selectdata, defineimage, setweighting)")
    timed(tools, "make_psf_and_pb", "make_psf_and_pb")
    timed(tools, "major_cycle", "major cycle (executemajorcycle)")
    timed(tools, "close", "close tools")
    timed(cycle_tasks, "_keep_imaging_weights", "keep imaging weights")
    timed(cycle_tasks, "_reuse_imaging_weights", "put back kept imaging weights")
    timed(cycle_tasks, "_with_mask_total", "mask total (reads part.mask)")
    timed(cycle_tasks, "_release_casa", "release CASA (clearlocks, gc, heap back to the OS)")

    open_deconvolver = tools.open_deconvolver

    def deconvolver(self):
        with timer.part("open deconvolver (setupdeconvolution)"):
            return _Deconvolver(open_deconvolver(self), timer)

    tools.open_deconvolver = deconvolver

    step = cycle_tasks._step

    @contextlib.contextmanager
    def timed_step(*args, **kwargs):
        manager = step(*args, **kwargs)
        with timer.part("step enter (copy previous cycle's images, log)"):
            value = manager.__enter__()
        try:
            yield value
        except BaseException:
            if not manager.__exit__(*sys.exc_info()):
                raise
        else:
            with timer.part("step exit (rename into place)"):
                manager.__exit__(None, None, None)

    cycle_tasks._step = timed_step

    for function, kind in ((cycle_tasks.start_chunk, "start"), (cycle_tasks.cycle_chunk, "cycle"),
                           (cycle_tasks.restore_chunk, "restore")):
        @functools.wraps(function)
        def wrapper(*args, _function=function, _kind=kind, **kwargs):
            timer.kind = _kind
            with timer.part("whole step"):
                return _function(*args, **kwargs)

        setattr(cycle_tasks, function.__name__, wrapper)


class _Deconvolver:
    """A synthesisdeconvolver whose calls are timed; a step's first initminorcycle before its minor
    cycle is the rebuild, the one after setupmask is serial's own."""

    def __init__(self, tool, timer: _Timer):
        self._tool, self._timer, self._setup = tool, timer, False

    def initminorcycle(self):
        name = "initminorcycle after setupmask" if self._setup or self._timer.kind == "start" \
            else "initminorcycle rebuild (loads images, statistics)"
        with self._timer.part(name):
            return self._tool.initminorcycle()

    def setupmask(self):
        self._setup = True
        with self._timer.part("setupmask"):
            return self._tool.setupmask()

    def __getattr__(self, name):
        attribute = getattr(self._tool, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with self._timer.part(name):
                return attribute(*args, **kwargs)

        return call


# Where serial tclean's and mpicasa's loop starts each phase, in their CASA log (client lines only)
_PHASES = (("Make PSF ---", "PSF, PB"), ("Run Major Cycle", "major cycle"), ("Run Minor Cycle Iterations", "minor cycle"),
           ("Restoring model image", "restore"), ("End Task: tclean", None))


def casa_log_phases(path: Path) -> list[dict]:
    """tclean's phases and their seconds (the log's 1 s resolution) from one tclean's CASA log."""
    from datetime import datetime

    marks = []
    for line in path.read_text(errors="replace").splitlines():
        if "MPIServer" in line:
            continue
        for marker, name in (("Begin Task: tclean", "set-up"), *_PHASES):
            # CASA logs some markers twice (two log sinks); a phase never follows itself
            if marker in line and not (marks and marks[-1][1] == name):
                marks.append((datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"), name))
    return [{"phase": name, "seconds": (marks[i + 1][0] - at).total_seconds()}
            for i, (at, name) in enumerate(marks[:-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--casa-log", type=Path, nargs="*", help="Only print these tclean logs' phases (serial, mpicasa).")
    parser.add_argument("--ms", type=Path, help="NGC5921 (hpc_imager.demo.make_ngc5921_ms)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hpc_imager-step-costs"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--imsize", type=int, default=1024)
    parser.add_argument("--niter", type=int, default=300)
    parser.add_argument("--channels-per-task", type=int, default=8)
    args = parser.parse_args()
    if args.casa_log:
        print(json.dumps({str(log): casa_log_phases(log) for log in args.casa_log}, indent=2))
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # before CASA loads: what distributed's nanny gives a worker
    sys.path.insert(0, str(REPO))
    from hpc_imager.imaging import casa_setup

    casa_setup.configure_offline()
    from hpc_imager.imaging.iteration import clean_cube, run_in_process
    from hpc_imager.inputs.cube_spec import parse_cube_spec
    from hpc_imager.inputs.preflight import check_cube
    from hpc_imager.run.journal import Journal

    args.work.mkdir(parents=True, exist_ok=True)
    spec = parse_cube_spec({"tclean": {"vis": str(args.ms.resolve()), "imagename": str(args.work / "cube"),
                                       "field": "2", "specmode": "cube", "imsize": [args.imsize] * 2,
                                       "cell": ["15arcsec"], "weighting": "briggs", "robust": 0.5,
                                       "niter": args.niter},
                            "parallel": {"channels_per_task": args.channels_per_task}}, args.work)
    params = spec.tclean.model_dump()
    grid = check_cube(spec)
    chunks = grid.chunks(args.channels_per_task)
    timer = _Timer()
    instrument(timer)
    steps: list[dict] = []

    def run_step(function, arguments, **keywords):
        started = time.perf_counter()
        results = run_in_process(function, arguments, **keywords)
        steps.append({"step": function.__name__, "cycle": keywords.get("cycle"),
                      "seconds": round(time.perf_counter() - started, 2)})
        return results

    run_dir = args.work / "run"
    journal = Journal.create(run_dir, {"fingerprint": spec.fingerprint()})
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with contextlib.chdir(args.work):
        summary = clean_cube(params, chunks, grid.nchan, run_dir, journal, run_step)
    total = time.perf_counter() - started
    kinds = {}
    for kind, parts in timer.seconds.items():
        whole = parts.pop("whole step")
        release = parts.get("release CASA (clearlocks, gc, heap back to the OS)", 0.0)  # timed inside the step's exit
        parts["step exit (rename into place)"] = parts.get("step exit (rename into place)", 0.0) - release
        fresh_only = sum(v for k, v in parts.items() if k not in ALSO_STATEFUL)
        kinds[kind] = {"whole_step_seconds": round(whole, 2),
                       "parts": {k: round(v, 2) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
                       "untimed_seconds": round(whole - sum(parts.values()), 2),
                       "fresh_only_seconds": round(fresh_only, 2),
                       "fresh_only_fraction": round(fresh_only / whole, 3)}
    result = {"imsize": args.imsize, "niter": args.niter, "chunks": len(chunks), "nchan": grid.nchan,
              "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)], "total_seconds": round(total, 2),
              "cycles": summary.get("nmajordone"), "iterdone": summary.get("iterdone"), "steps": steps, "by_kind": kinds}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
