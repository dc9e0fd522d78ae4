"""What one run's steps share: the run context every mode, the task loop and the cluster session take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console

from ..backends.base import Backend
from ..imaging.channel_grid import ChannelGrid, Chunk
from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import SiteProfile
from .concat import CubeAssembly, VirtualAssembly, wants_common_beam
from .journal import Journal

if TYPE_CHECKING:
    from .cluster_session import SharedWorkers


@dataclass
class RunContext:
    """Everything one run's steps share: what to image, where, and where its record is kept."""

    spec: CubeSpec
    site: SiteProfile
    backend: Backend
    run_dir: Path
    journal: Journal
    console: Console
    grid: ChannelGrid
    chunks: list[Chunk]
    assembly: CubeAssembly | VirtualAssembly | None  # made once the run's journal says what is placed
    cube_weights: str = ""  # the whole cube's imaging weights every chunk is handed (briggsbwtaper)
    allocation: "SharedWorkers | None" = None  # the workers this cube shares with the others of its submission
    label: str = ""  # how the terminal names this cube among the others of its submission (its cube.toml)

    @property
    def tclean_params(self) -> dict:
        """tclean's keywords as every chunk gets them (start/width/nchan are added per chunk)."""
        params = self.spec.tclean.model_dump()
        if wants_common_beam(params):
            params["restoringbeam"] = []  # per plane now; the common beam is chosen over all channels at concat
        return params

    def log_texts(self) -> Iterator[str]:
        """The run's worker and job logs, where distributed's nanny and the batch system write kills
        (a cube sharing its submission's workers: theirs too, in the first cube's run directory)."""
        for logs in dict.fromkeys(d / "logs" for d in (self.run_dir, self.allocation and self.allocation.run_dir) if d):
            for path in [*logs.glob("worker-*.log"), *(logs / "jobs").glob("*")]:
                if path.is_file():
                    yield path.read_text(errors="replace")
