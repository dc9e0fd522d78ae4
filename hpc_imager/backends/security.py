"""TLS for one run: the scheduler, its workers and the driver's client talk ``tls://`` with a
certificate made for this run, and the dashboard listens where the site says (loopback by default).

Why: on a shared login node anyone who can reach the scheduler's port can connect a client and run
code as the user ("Dask enables the remote execution of arbitrary code", distributed's security
docs). With TLS both ends must show a certificate signed by the run's own authority, which only the
driver (in memory) and the run's jobs (in the run directory) have.

How: distributed's ``Security.temporary()`` makes a key and a self-signed certificate in memory.
dask-jobqueue writes the workers' copies (CA, certificate, key) with ``tempfile.NamedTemporaryFile``
(mode 0600) into its ``shared_temp_directory``: here ``<run dir>/tls``, made 0700, on the shared file
system the jobs see. :func:`forget_worker_certificates` and :func:`run_certificates` remove them
when the cluster closes, also after Ctrl-C or SIGTERM; only a SIGKILLed driver leaves them, and the
next run in that directory removes them first (they are useless: every run makes a new authority).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from distributed.security import Security

TLS_DIRECTORY = "tls"
# dask-jobqueue keeps the open temporary files on the cluster as _job_<key> (core.py, _get_worker_security).
_JOBQUEUE_CERTIFICATE_FILES = ("_job_ca_file", "_job_cert", "_job_key")


@contextlib.contextmanager
def run_certificates(run_dir: Path) -> Iterator[tuple["Security", Path]]:
    """A new certificate authority for this run and the owner-only directory its worker files go in."""
    from distributed.security import Security

    directory = Path(run_dir) / TLS_DIRECTORY
    shutil.rmtree(directory, ignore_errors=True)  # a SIGKILLed driver's
    directory.mkdir(parents=True)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    try:
        yield Security.temporary(), directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def forget_worker_certificates(cluster) -> None:
    """Close (and so delete) the files dask-jobqueue wrote for the workers."""
    for name in _JOBQUEUE_CERTIFICATE_FILES:
        handle = getattr(cluster, name, None)
        if handle is not None:
            with contextlib.suppress(FileNotFoundError):
                handle.close()


def dashboard_hint(dashboard_link: str, listen_address: str) -> str:
    """The dashboard's address and, when it listens on loopback, how to reach it from a laptop.

    distributed's ``dashboard_link`` names the scheduler's host even when the dashboard listens on
    127.0.0.1 only; the link printed here names where it really listens.
    """
    from urllib.parse import urlsplit

    link = urlsplit(dashboard_link)
    host = listen_address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost") or link.port is None:
        return f"dashboard {dashboard_link}"
    port, path = link.port, link.path or "/status"
    return (f"dashboard http://127.0.0.1:{port}{path} (this machine only; from your laptop: "
            f"ssh -L {port}:127.0.0.1:{port} {getpass.getuser()}@{_login_host()} "
            f"then open http://localhost:{port}{path})")


def _login_host() -> str:
    name = socket.getfqdn()
    return socket.gethostname() if name.startswith("localhost") else name
