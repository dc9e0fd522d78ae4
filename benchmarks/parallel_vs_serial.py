"""Benchmark: wall(parallel) / wall(serial tclean) for the same NGC5921 cube, measured in one run.

    python benchmarks/parallel_vs_serial.py [--imsize 1024] [--channels-per-task 4] [--workers 2]

Prints both wall times, their ratio, the concat time and the largest per-plane difference. With
``--niter`` > 0 the cube is made twice more, with whole-cube iteration (``iteration = "cube"``) and
with independent chunks (``"per-chunk"``), and where cube mode's time went: per step its wall time,
its longest task and the workers' time spent waiting at the step's barrier.
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

    results = {"imsize": args.imsize, "workers": args.workers, "channels_per_task": args.channels_per_task,
               "niter": args.niter, "serial_seconds": round(serial, 2)}
    for mode in ("cube", "per-chunk") if args.niter > 0 else (None,):
        name = f"parallel-{mode}" if mode else "parallel"
        parallel_params = {"channels_per_task": args.channels_per_task, "workers": args.workers}
        if mode:
            parallel_params["iteration"] = mode
        spec = parse_cube_spec({"tclean": dict(tclean_params, imagename=str(work / name)), "parallel": parallel_params},
                               work)
        started = time.time()
        report = image_cube(spec, load_site("local"))
        parallel = time.time() - started
        products = ("image", "residual", "model", "psf") if args.niter > 0 else ("image", "psf")
        worst = max(max(plane_differences(str(work / f"{name}.{p}"), str(work / f"serial.{p}"))) for p in products)
        result = {
            "parallel_seconds": round(parallel, 2), "ratio_parallel_over_serial": round(parallel / serial, 3),
            "concat_seconds": round(report["concat"]["concat_seconds"], 2),
            "concat_bytes_written": report["concat"]["concat_bytes_written"],
            "product_bytes": report["concat"]["product_bytes"],
            "max_plane_difference": worst,
        }
        if report["chunk_metrics"]:
            result["peak_rss_gib_per_task"] = round(max(m["peak_rss_bytes"] for m in report["chunk_metrics"]) / 2**30, 3)
        if report.get("iteration_summary"):
            summary = report["iteration_summary"]
            result["iterdone"], result["stop"] = summary["iterdone"], summary["stopDescription"]
            result["steps"] = [{"step": s["step"], "wall": round(s["wall_seconds"], 2),
                                "longest_task": round(s["task_seconds_max"], 2),
                                "waiting_at_barrier": round(args.workers * s["wall_seconds"] - s["task_seconds_sum"], 2)}
                               for s in summary["steps"]]
        results[mode or "parallel"] = result
    print(json.dumps(results, indent=2))
    print(f"work directory (not removed): {work}")


if __name__ == "__main__":
    main()
