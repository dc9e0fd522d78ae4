"""Modes whose task images a whole chunk in one go: niter 0 (tclean's steps on casatools alone) and
per-chunk cleaning (each chunk its own tclean, its own iteration control).

Each finished chunk is journalled ``done`` with its metrics and its part placed into the cube at
once; a resumed run images only the chunks not done. These modes may image one chunk alone first
(the probe) to size the workers for the rest from its measured peak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .base import ImagingMode, ModeResult

if TYPE_CHECKING:  # the driver's side imports them when it runs: `status` must not wait for dask (see base)
    from ...imaging.channel_grid import Chunk
    from ...sizing.estimate import TaskEstimate
    from ...sizing.plan import Plan
    from ..cluster_session import Passes
    from ..context import RunContext
    from ..task_loop import Tasks

log = logging.getLogger(__name__)

# The probe's one worker asks this many times the model's figure, so that a model that is short
# (it cannot know every cube) does not get the measurement itself killed.
PROBE_ALLOWANCE = 2.0


@dataclass
class Probe:
    """One chunk imaged alone first (or measured by an earlier run of this cube) to size the rest."""

    chunk: "Chunk | None"
    estimate: "TaskEstimate | None"  # from the measured peak; None when the probe did not finish
    passes: "Passes | None" = None  # the probe's own passes (None: measured before)

    def as_dict(self) -> dict:
        return {"chunk": self.chunk.index if self.chunk else None,
                "measured_by_this_run": self.passes is not None,
                "plans": [p.as_dict() for p in self.passes.plans] if self.passes else [],
                "estimate": self.estimate.as_dict() if self.estimate else None}


class WholeChunks(ImagingMode):
    """One task per chunk, the chunk imaged whole."""

    def todo(self, run: "RunContext") -> list[Chunk]:
        from ...imaging.imaging_task import part_path

        return [c for c in run.chunks if not (run.journal.record(c.index).done and part_path(run.run_dir, c).is_dir())]

    def tasks(self, run: "RunContext", estimated_peak_bytes: int) -> Tasks:
        """The whole-chunk task; each chunk recorded with the peak it was planned for."""
        from ...imaging.imaging_task import whole_chunk_task
        from ..task_loop import Tasks

        function, inputs = whole_chunk_task(run.tclean_params, run.cube_weights)

        def done(chunk: Chunk, attempt: int, metrics: dict) -> None:
            run.journal.done(chunk.index, dict(metrics, estimated_peak_bytes=estimated_peak_bytes))
            run.assembly.arrived(chunk)

        return Tasks(function, inputs, "imaging", done)

    def image(self, run: "RunContext", plan: Plan, estimate: TaskEstimate, todo: list[Chunk]) -> ModeResult:
        from ...sizing.estimate import probe_wanted
        from ...sizing.plan import make_plan
        from ..cluster_session import ClusterSession

        # a cube sharing its submission's workers finds them sized already (for the largest task of all)
        probe = (self.probe(run, estimate, todo)
                 if not run.allocation and probe_wanted(run.spec, run.site, plan) and len(todo) > 1 else None)
        if probe and probe.passes:  # the probe's chunk has had its tries (and its more memory)
            todo = [c for c in todo if c != probe.chunk]
        if probe and probe.estimate:
            plan = make_plan(run.spec, run.site, probe.estimate, max(1, len(todo)))
            log.info("sized from the probe: %s", plan.summary())
        with ClusterSession(run, plan) as session:
            if todo:
                session.run_tasks(self.tasks(run, plan.basis.task_peak_bytes), todo)
        passes = session.passes
        if probe and probe.passes:
            passes.add(probe.passes)
        records = (run.journal.record(c.index) for c in run.chunks)
        return ModeResult(passes, [r.done for r in records if r.done], probe=probe.as_dict() if probe else None)

    def probe(self, run: "RunContext", estimate: TaskEstimate, todo: list[Chunk]) -> Probe | None:
        """Measure one whole chunk on one worker (the run's first job on a batch site) and estimate
        the others from it; a resumed run uses the chunks it already measured instead."""
        from ...sizing.estimate import GIB, probed_estimate
        from ...sizing.plan import PlanRefused, make_plan
        from ..cluster_session import ClusterSession

        whole = run.spec.parallel.channels_per_task
        measured = [r.done for r in (run.journal.record(c.index) for c in run.chunks)
                    if r.done and r.done.get("channels") == whole]
        if measured:
            return Probe(None, probed_estimate(run.spec, max(measured, key=lambda m: m["peak_rss_bytes"])))
        first = next((c for c in todo if c.nchan == whole), None)
        if first is None:
            return None
        plan = make_plan(run.spec, run.site, estimate, chunks=1)
        try:
            plan = plan.with_more_memory(factor=PROBE_ALLOWANCE)
        except PlanRefused:
            pass  # a node cannot hold twice the model's figure: probe with the model's own
        run.console.print(f"hpc_imager: probe: imaging {first.name} alone to measure what one task needs")
        with ClusterSession(run, plan) as session:
            # recorded with the model's estimate (not the allowance), to show how far off it was
            session.run_tasks(self.tasks(run, int(estimate.task_peak_gib * GIB)), [first])
        done = run.journal.record(first.index).done
        probed = probed_estimate(run.spec, done) if done else None
        if probed:
            run.console.print(f"hpc_imager: probe: one task took {done['peak_rss_bytes'] / GIB:.2f} GiB "
                              f"(the {estimate.model} model said {estimate.task_peak_gib:.2f} GiB)")
        return Probe(first, probed, session.passes)


class NiterZero(WholeChunks):
    key: ClassVar[str] = "none"
    title: ClassVar[str] = "niter 0"

    def tclean_return(self, result: ModeResult, tclean_params: dict) -> dict:
        """Serial tclean's niter-0 return, as casatasks' ImagingDict makes it from the cube's products."""
        from .niter_zero_return import niter_zero_return

        return niter_zero_return(tclean_params)


class PerChunkCleaning(WholeChunks):
    key: ClassVar[str] = "per-chunk"
    title: ClassVar[str] = "per-chunk cleaning"

    def tclean_return(self, result: ModeResult, tclean_params: dict) -> dict:
        """Each chunk ran its own tclean: its iterations summed, the major cycles of the longest, and
        every chunk's stop code (there is no one cube-wide stop)."""
        returns = sorted((m for m in result.chunk_metrics if m.get("tclean_return")), key=lambda m: m["chunk"])
        if not returns:
            return {}
        values = [m["tclean_return"] for m in returns]
        summary: dict[str, dict] = {}  # the chunks' summaryminor, channels numbered in the cube
        for m in returns:
            for field, channels in (m.get("summaryminor") or {}).items():
                summary.setdefault(field, {}).update({str(m["first_channel"] + int(ch)): planes
                                                      for ch, planes in channels.items() if int(ch) < m["channels"]})
        return {"iterdone": sum(int(v.get("iterdone", 0)) for v in values),
                "nmajordone": max(int(v.get("nmajordone", 0)) for v in values),
                "stopcodes": [v.get("stopcode") for v in values],
                "summaryminor": summary}
