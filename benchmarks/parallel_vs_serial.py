"""Benchmark: wall(parallel) / wall(serial tclean) for the same NGC5921 cube, measured in one run.

    python benchmarks/parallel_vs_serial.py [--imsize 1024] [--channels-per-task 4] [--workers 2]

Prints both wall times, their ratio, the concat time and the largest per-plane difference.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hpc_imager import casa_setup

casa_setup.configure_offline()

from hpc_imager.cube_spec import parse_cube_spec  # noqa: E402
from hpc_imager.demo import make_ngc5921_ms  # noqa: E402
from hpc_imager.driver import image_cube  # noqa: E402
from hpc_imager.serial_check import plane_differences  # noqa: E402
from hpc_imager.site_profile import load_site  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imsize", type=int, default=1024)
    parser.add_argument("--channels-per-task", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--niter", type=int, default=0)
    args = parser.parse_args()

    from casatasks import casalog, tclean

    casalog.showconsole(False)
    work = Path(tempfile.mkdtemp(prefix="hpc_imager-bench-"))
    ms = make_ngc5921_ms(work / "ngc5921.ms")
    tclean_params = {"vis": str(ms), "field": "2", "specmode": "cube", "nchan": -1,
                     "imsize": [args.imsize, args.imsize], "cell": ["15arcsec"], "niter": args.niter}

    started = time.time()
    tclean(imagename=str(work / "serial"), **tclean_params)
    serial = time.time() - started

    spec = parse_cube_spec({"tclean": dict(tclean_params, imagename=str(work / "parallel")),
                            "parallel": {"channels_per_task": args.channels_per_task, "workers": args.workers}}, work)
    started = time.time()
    report = image_cube(spec, load_site("local"))
    parallel = time.time() - started

    worst = max(max(plane_differences(str(work / f"parallel.{p}"), str(work / f"serial.{p}"))) for p in ("image", "psf"))
    print(json.dumps({
        "imsize": args.imsize, "nchan": report["nchan"], "workers": args.workers,
        "channels_per_task": args.channels_per_task, "serial_seconds": round(serial, 2),
        "parallel_seconds": round(parallel, 2), "ratio_parallel_over_serial": round(parallel / serial, 3),
        "concat_seconds": round(report["concat"]["concat_seconds"], 2),
        "concat_bytes_written": report["concat"]["concat_bytes_written"],
        "product_bytes": report["concat"]["product_bytes"],
        "peak_rss_gib_per_task": round(max(m["peak_rss_bytes"] for m in report["chunk_metrics"]) / 2**30, 3),
        "max_plane_difference": worst,
    }, indent=2))
    print(f"work directory (not removed): {work}")


if __name__ == "__main__":
    main()
