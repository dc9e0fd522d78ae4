"""The interface the dask scheduler listens on for a batch site's workers, checked on the driver's host
before any job is submitted.

Why: the compute nodes reach the driver over the cluster's network, not over loopback, and the
scheduler must listen where they reach it (a login node's cluster-side interface). An interface the
host lacks surfaced as a traceback once the cluster started ("RuntimeError: Cluster failed to start:
'ib7' is not a valid network interface", dask-jobqueue 0.9); one that is down, has no IPv4 address
(distributed listens on IPv4 only there) or is loopback gives the jobs an address they cannot
connect to: every worker ends at once (measured on CI's namespaced nodes with an unroutable scheduler
address: "Network is unreachable"), jobs are resubmitted, and only after the site's worker_wait does
the run say that no worker started.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from ..inputs.site_profile import SiteError, SiteProfile


def scheduler_interface(site: SiteProfile) -> str | None:
    """The site's interface for the scheduler (driver_interface, else interface), or None (distributed's
    choice); a :class:`SiteError` naming the field when the nodes could not reach it."""
    field = "driver_interface" if site.driver_interface else "interface"
    name = site.driver_interface or site.interface
    if name is None:
        return None
    where = f"site {site.name}: {field} '{name}'"
    addresses = psutil.net_if_addrs()
    if name not in addresses:
        raise SiteError(f"{where} is not a network interface of this host ({socket.gethostname()}, which has "
                        f"{', '.join(sorted(addresses))}); no job was submitted")
    if not psutil.net_if_stats()[name].isup:
        raise SiteError(f"{where} is down on this host; no job was submitted")
    ipv4 = [a.address for a in addresses[name] if a.family == socket.AF_INET]
    if not ipv4:
        raise SiteError(f"{where} has no IPv4 address on this host; no job was submitted")
    if all(ipaddress.ip_address(a).is_loopback for a in ipv4):
        raise SiteError(f"{where} is loopback ({ipv4[0]}): the compute nodes cannot reach the scheduler there; "
                        "name the interface they reach this host on; no job was submitted")
    return name
