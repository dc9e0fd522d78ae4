"""This machine: a LocalCluster of single-threaded worker processes on loopback, the dashboard where
the site says (loopback by default)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import dask

from ..imaging import casa_setup
from ..inputs.site_profile import SiteError
from .base import Backend, worker_process_config


class LocalBackend(Backend):
    name = "local"

    @contextlib.contextmanager
    def _client(self, plan, site, run_dir: Path) -> Iterator:
        from distributed import Client, LocalCluster

        casa_setup.configure_offline()  # workers inherit CASASITECONFIG from this process
        with dask.config.set(worker_process_config()), LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=plan.threads_per_worker,
            processes=True,
            memory_limit=plan.worker_memory_limit_bytes,
            dashboard_address=site.dashboard_address,
            host="127.0.0.1",
        ) as cluster, Client(cluster) as client:
            yield client

    def job_script(self, plan, site, run_dir=None) -> str:
        return ""

    def driver_script(self, spec, site, site_argument, cube_toml) -> str:
        raise SiteError(f"site '{site.name}' runs workers on this machine: run `hpc_imager submit` directly")


LOCAL = LocalBackend()
