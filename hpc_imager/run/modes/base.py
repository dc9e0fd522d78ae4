"""The interface every imaging mode implements.

Both sides live on one class: the driver's (refusals before imaging, which chunks are left, running
them) and the readers' (``status``, report.png), which see only the journal's events, so the readers'
side imports no CASA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ...imaging.channel_grid import ChannelGrid, Chunk
    from ...sizing.estimate import TaskEstimate
    from ...sizing.plan import Plan
    from ..cluster_session import Passes
    from ..context import RunContext


@dataclass
class ModeResult:
    """What a mode's imaging came to."""

    passes: "Passes"
    chunk_metrics: list[dict]  # one per finished chunk: its peak memory, time, worker
    report: dict = field(default_factory=dict)  # the mode's own keys of report.json
    probe: dict | None = None
    summary: dict | None = None  # the iteration controller's summary (whole-cube iteration)


class ImagingMode(ABC):
    key: ClassVar[str]  # spec.iteration's value; run.json's and report.json's "mode"
    title: ClassVar[str]  # as the terminal and report.png say it
    task_legend: ClassVar[str] = "blue: a chunk imaged"  # what report.png's timeline bars are

    # --- the driver's side ------------------------------------------------------------------

    @staticmethod
    def refuse(tclean: dict, chunks: list["Chunk"], grid: "ChannelGrid") -> None:
        """Raise a UserError, before anything runs, for what this mode cannot make as serial tclean does."""

    @abstractmethod
    def todo(self, run: "RunContext") -> list["Chunk"]:
        """The chunks this run (or a resumed one) still has to image."""

    @abstractmethod
    def image(self, run: "RunContext", plan: "Plan", estimate: "TaskEstimate", todo: list["Chunk"]) -> ModeResult:
        """Image ``todo``; every finished chunk's part goes to ``run.assembly`` and its metrics to the journal."""

    def tclean_return(self, result: ModeResult, tclean_params: dict) -> dict:
        """What serial tclean returns for this cube, once its products are in place."""
        return {}

    # --- the readers' side ------------------------------------------------------------------

    @staticmethod
    def progress(events: list[dict]) -> dict:
        """The mode's own progress from the journal's events (``status --json``'s "progress")."""
        return {}

    @classmethod
    def progress_line(cls, events: list[dict]) -> str | None:
        """``status``'s line for :meth:`progress`, if the mode has one."""
        return None

    eta_known: ClassVar[bool] = True  # whether chunks' times foretell the rest (not across cleaning cycles)
