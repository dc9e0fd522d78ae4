"""Whole-cube iteration (niter > 0, the default): one iteration controller in the driver, as serial
tclean holds it (:mod:`hpc_imager.imaging.iteration`), and every chunk runs each step of it.

What it journals: every step's submissions and failures with the step's name, each chunk's finished
step (``step done``, with its worker, time and peak), each step every chunk finished (``iteration
step``, with the controller's records and its progress: cycle, iterations, peak residual), and each
chunk ``done`` once its restored part is made, with its peak and time over all its steps. So
``status`` counts a chunk done only when its part is final, a retry only when a step failed, and
shows the cleaning's cycle and iterations while it runs. ``--resume`` replays the journalled steps
into a new controller and goes on after the last step every chunk finished.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from .base import ImagingMode, ModeResult

if TYPE_CHECKING:  # the driver's side imports them when it runs: `status` must not wait for dask (see base)
    from ...imaging.channel_grid import ChannelGrid, Chunk
    from ...sizing.estimate import TaskEstimate
    from ...sizing.plan import Plan
    from ..context import RunContext

STEP_DESCRIPTIONS = {"start": "PSF, residual", "mask": "automask", "restore": "restoring"}


class _StepUnfinished(Exception):
    """A step could not finish in every chunk (the session's passes say which and why)."""


class CubeIteration(ImagingMode):
    key: ClassVar[str] = "cube"
    title: ClassVar[str] = "whole-cube iteration"
    task_legend: ClassVar[str] = "blue: a chunk's cycle, green: its PSF and residual or its restore"
    eta_known: ClassVar[bool] = False  # how many cycles are left is the controller's to find

    @staticmethod
    def refuse(tclean: dict, chunks: list[Chunk], grid: ChannelGrid) -> None:
        from ...imaging.iteration import cube_iteration_refusal

        cube_iteration_refusal(tclean, chunks, grid)

    def todo(self, run: "RunContext") -> list[Chunk]:
        return list(run.chunks)  # every chunk takes part in every step; finished steps are replayed

    def image(self, run: "RunContext", plan: Plan, estimate: TaskEstimate, todo: list[Chunk]) -> ModeResult:
        from ...imaging.cycle_tasks import mask_chunk, restore_chunk, start_chunk
        from ...imaging.iteration import clean_cube, iteration_report
        from ..cluster_session import ClusterSession
        from ..task_loop import Tasks

        step_names = {start_chunk: "start", mask_chunk: "mask", restore_chunk: "restore"}
        latest = {"cycle": 0, "iterdone": 0, "peakresidual": 0.0}
        chunk_metrics: dict[int, dict] = {}  # by chunk, over the steps this driver ran
        timings: list[dict] = []  # per step: its wall time and its tasks' (the rest is waiting at the barrier)
        with ClusterSession(run, plan) as session:

            def run_step(function, arguments: list[tuple], **keywords) -> list:
                # ``arguments`` are each chunk's (records, chunk, run directory), in the order of run.chunks
                name = step_names.get(function, f"cycle {keywords.get('cycle')}")
                inputs = {chunk.index: records for records, chunk, _ in arguments}
                results: dict[int, dict] = {}

                def done(chunk: Chunk, attempt: int, metrics: dict) -> None:
                    results[chunk.index] = metrics
                    total = chunk_metrics.setdefault(chunk.index, {
                        "chunk": chunk.index, "channels": chunk.nchan, "attempt": attempt, "wall_seconds": 0.0,
                        "peak_rss_bytes": 0, "estimated_peak_bytes": session.plan.basis.task_peak_bytes,
                        "hosts": [], "read_chars": 0, "write_chars": 0})
                    total["wall_seconds"] += metrics["seconds"]
                    total.update({k: total[k] + metrics[k] for k in ("read_chars", "write_chars")},
                                 **{k: v for k, v in metrics.items() if k == "part_bytes"})
                    total["peak_rss_bytes"] = max(total["peak_rss_bytes"], metrics["peak_rss_bytes"])
                    # its steps run wherever a worker is free: every host that imaged a step of it
                    total["hosts"] = sorted(set(total["hosts"]) | {metrics["host"]})
                    total.update(worker=metrics.get("worker"), host=metrics.get("host"), attempt=attempt)
                    run.journal.step_done(chunk.index, attempt, name, _step_metrics(metrics))
                    if function is restore_chunk:  # its part is final: placed while the other chunks restore
                        run.journal.done(chunk.index, total)
                        run.assembly.arrived(chunk)

                description = (f"{name} (iterations {latest['iterdone']}, peak residual {latest['peakresidual']:.3g})"
                               if name.startswith("cycle") else STEP_DESCRIPTIONS[name])
                step_started = time.time()
                if session.run_tasks(Tasks(function, lambda chunk: inputs[chunk.index], description, done, keywords, name),
                                     list(run.chunks)):
                    raise _StepUnfinished
                ordered = [results[c.index] for c in run.chunks]
                task_seconds = [r["seconds"] for r in ordered]
                timings.append({"step": name, "wall_seconds": time.time() - step_started,
                                "task_seconds_max": max(task_seconds), "task_seconds_sum": sum(task_seconds)})
                return ordered

            try:
                summary = clean_cube(run.tclean_params, run.chunks, run.grid.nchan, run.run_dir, run.journal,
                                     run_step, on_cycle=latest.update, cube_weights=run.cube_weights)
            except _StepUnfinished:
                return ModeResult(session.passes, list(chunk_metrics.values()))
        for chunk in run.chunks:  # restored before a resume: placed now (a chunk placed already is skipped)
            run.assembly.arrived(chunk)
        report = {"iteration_summary": dict(iteration_report(summary), steps=timings)}
        return ModeResult(session.passes, list(chunk_metrics.values()), report, summary=summary)

    def tclean_return(self, result: ModeResult, tclean_params: dict) -> dict:
        return dict(result.summary or {})  # the one controller's, as serial's imager.getSummary gives it

    @staticmethod
    def progress(events: list[dict]) -> dict:
        steps = [e["step"] for e in events if e["event"] == "iteration step"]
        latest = next((s["progress"] for s in reversed(steps) if s.get("progress")), None)
        running = next((e["step"] for e in reversed(events) if e["event"] == "submitted" and e.get("step")), None)
        return {"cycles_done": max((s["cycle"] for s in steps), default=0) if steps else None,
                "step_running": running if not any(s["kind"] == "restored" for s in steps) else None,
                "iterdone": latest["iterdone"] if latest else 0,
                "peakresidual": latest["peakresidual"] if latest else None,
                "majorcycles": latest["majorcycles"] if latest else 0,
                "converged": any(s.get("converged") for s in steps),
                "restored": any(s["kind"] == "restored" for s in steps)}

    @classmethod
    def progress_line(cls, events: list[dict]) -> str | None:
        p = cls.progress(events)
        if p["cycles_done"] is None:
            return "cleaning: PSF and first residual being made" if any(e["event"] == "submitted" for e in events) \
                else "cleaning: not started"
        peak = f", peak residual {p['peakresidual']:.4g}" if p["peakresidual"] is not None else ""
        state = ("restored" if p["restored"] else "converged, restoring" if p["converged"]
                 else f"now {p['step_running']}" if p["step_running"] else "between cycles")
        return (f"cleaning: {p['cycles_done']} minor cycle(s) done, {p['iterdone']} iterations,"
                f" {p['majorcycles']} major cycle(s){peak}; {state}")


def _step_metrics(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("seconds", "peak_rss_bytes", "worker", "host", "read_chars", "write_chars")
            if k in metrics}

