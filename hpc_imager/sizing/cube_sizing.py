"""preflight → estimate → plan, the one sequence that ``submit``, ``plan`` and ``estimate`` share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..imaging.channel_grid import ChannelGrid, Chunk
from ..inputs.cube_spec import CubeSpec
from ..inputs.preflight import check_cube
from ..inputs.site_profile import SiteProfile
from .chunk_size import with_channels_per_task
from .disk import DiskNeed, disk_need
from .estimate import TaskEstimate, cube_facts, estimate_task
from .plan import AssemblyChoice, Plan, choose_assembly, make_plan


@dataclass(frozen=True)
class SizedCube:
    """A cube checked as tclean would check it, cut into chunks, one task's memory estimated, planned."""

    spec: CubeSpec  # with channels_per_task chosen
    site: SiteProfile
    grid: ChannelGrid
    chunks: list[Chunk]
    estimate: TaskEstimate

    @cached_property
    def plan(self) -> Plan:
        """Made when asked: ``estimate`` shows one task's need even where the site cannot hold it."""
        return make_plan(self.spec, self.site, self.estimate, len(self.chunks))

    def disk(self, assembly: str) -> DiskNeed:
        """What the run will write, where, with its ``assembly`` (``disk.check_disk`` refuses what a file
        system cannot hold)."""
        return disk_need(self.spec, self.chunks, assembly)

    def assembly(self, started: str | None = None) -> AssemblyChoice:
        """The final cube's assembly: the one a resumed run ``started`` with (its parts are assembled
        one way), else ``[run] assembly``, else the site's, else the plan's choice."""
        from ..run.concat import wants_common_beam

        asked = started or (self.spec.run.assembly if self.spec.run.assembly != "auto" else self.site.assembly)
        return choose_assembly(self.plan, asked, common_beam=wants_common_beam(self.spec.tclean.model_dump()),
                               tabular_axis=self.grid.tabular_axis is not None)


def size_cube(spec: CubeSpec, site: SiteProfile, previous_channels_per_task: int | None = None) -> SizedCube:
    """Every mistake tclean would make is one line here, before any worker starts; a resumed run keeps
    the ``channels_per_task`` it was started with (its chunks must stay the same)."""
    grid = check_cube(spec)
    facts = cube_facts(spec)
    spec = with_channels_per_task(spec, site, grid, facts, previous=previous_channels_per_task)
    chunks = grid.chunks(spec.parallel.channels_per_task)
    estimate = estimate_task(spec, site, facts)
    return SizedCube(spec, site, grid, chunks, estimate)
