"""*Where and how* workers run: one backend per kind of site (local, slurm, pbs, sge).

Everything that differs between batch systems lives behind :class:`~hpc_imager.backends.base.Backend`:
the cluster that starts workers, the job script dask-jobqueue renders, the wrapper that runs the
driver itself as a job, how a memory kill shows in the logs. Nothing else asks which scheduler a
site has; it asks the site's backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..inputs.site_profile import SiteProfile
    from .base import Backend


def backend_for(site: "SiteProfile") -> "Backend":
    from . import local, pbs, sge, slurm

    return {"local": local.LOCAL, "slurm": slurm.SLURM, "pbs": pbs.PBS, "sge": sge.SGE}[site.scheduler]
