"""Cluster mode, as the loader wires it: options, the node secret, the node itself.

``opendo serve PROJECT --cluster postgresql://USER@HOST:PORT/DB --advertise HOST:PORT
[--lease-seconds S] [--workers N]`` — or the same keys under ``[cluster]`` in opendo.toml (the
command line wins) — makes every serving process a node of a cluster whose truth is that
PostgreSQL database. The node secret, shared by every node, comes from the environment
variable ``OPENDO_CLUSTER_SECRET`` or from the project's ``.dev.vars``, never from the TOML,
and never reaches the Worker's ``env``.

With ``--workers N`` each of the N processes is a node of its own, listening for the other
nodes on the first free port of ``PORT`` … ``PORT+N-1`` of the advertised host (a worker that
is restarted takes the port its predecessor left). An advertised port of 0 lets each process
bind a free port and advertise that one (for another server's ``--workers``, where every
process reads the same ``[cluster]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..cluster.driver import ClusterDriver
from ..cluster.forwarder import MIN_SECRET_BYTES, NodeForwarder, format_address, parse_address
from ..cluster.node import ClusterNode, ClusterSettings
from ..core.errors import ConfigError
from ..core.storage import StorageDriver
from ..storage.sqlite import SqliteDriver
from .config import CLUSTER_SECRET, Config

__all__ = [
    "ClusterOptions",
    "cluster_driver",
    "cluster_options",
    "cluster_secret",
    "driver_for",
    "make_node",
    "where_shown",
]

DEFAULT_LEASE_SECONDS = 10.0


@dataclass(frozen=True)
class ClusterOptions:
    url: str
    advertise: str  # HOST:PORT (the first of the workers' ports)
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    listen: str | None = None  # HOST:PORT to bind, when it is not the advertised address
    workers: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "advertise": self.advertise,
            "lease_seconds": self.lease_seconds,
            "listen": self.listen,
            "workers": self.workers,
        }


def cluster_options(
    config: Config,
    *,
    url: str | None = None,
    advertise: str | None = None,
    lease_seconds: float | None = None,
    workers: int = 1,
) -> ClusterOptions | None:
    """The cluster options from the command line and ``[cluster]`` (None: not a cluster)."""
    section = config.cluster
    url = url or section.url
    advertise = advertise or section.advertise
    lease = lease_seconds if lease_seconds is not None else section.lease_seconds
    if url is None:
        if advertise is not None or lease_seconds is not None:
            raise ConfigError("--advertise and --lease-seconds need --cluster URL")
        return None
    scheme = urlsplit(url).scheme
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"--cluster {url!r}: expected a PostgreSQL URL, postgresql://USER@HOST:PORT/DB"
        )
    if advertise is None:
        raise ConfigError(
            "cluster mode needs --advertise HOST:PORT (or advertise in [cluster]): the "
            "address where the other nodes reach this one"
        )
    for what, address in (("--advertise", advertise), ("listen", section.listen)):
        if address is not None:
            try:
                _address(address)
            except ValueError as exc:
                raise ConfigError(f"{what} {address!r}: {exc}") from None
    if lease is not None and not 1 <= lease <= 3600:
        raise ConfigError(f"--lease-seconds {lease:g}: expected 1..3600 seconds")
    return ClusterOptions(
        url,
        advertise,
        DEFAULT_LEASE_SECONDS if lease is None else float(lease),
        section.listen,
        workers,
    )


def cluster_secret(config: Config) -> bytes:
    """The node secret: ``OPENDO_CLUSTER_SECRET`` from the environment (or, in development,
    ``.dev.vars``)."""
    secret = os.environ.get(CLUSTER_SECRET) or config.secrets.get(CLUSTER_SECRET)
    if not secret:
        raise ConfigError(
            f"cluster mode needs the nodes' shared secret in {CLUSTER_SECRET} (in the "
            "environment, or for opendo dev in .dev.vars beside opendo.toml); make one with: "
            "python -c "
            "'import secrets; print(secrets.token_hex(32))'"
        )
    data = secret.encode()
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{CLUSTER_SECRET} is {len(data)} bytes; it must be at least {MIN_SECRET_BYTES} "
            "(32 random bytes, as hex, are advised)"
        )
    return data


def cluster_driver(options: ClusterOptions) -> ClusterDriver:
    return ClusterDriver(options.url)


def driver_for(where: Path | str) -> StorageDriver:
    """The storage driver of a persist directory, or of a cluster (its PostgreSQL URL)."""
    if isinstance(where, str):
        return ClusterDriver(where)
    return SqliteDriver(where)


def where_shown(where: Path | str) -> str:
    """A persist directory, or a cluster's URL without its password, for messages."""
    return ClusterDriver(where).dsn_shown() if isinstance(where, str) else str(where)


def _address(address: str) -> tuple[str, int]:
    """``host:port`` as ``parse_address`` reads it, with port 0 allowed (a free one)."""
    host, _, port = address.rpartition(":")
    if port == "0":
        return parse_address(f"{host}:1")[0], 0
    return parse_address(address)


def make_node(options: ClusterOptions, secret: bytes, persist: Path) -> ClusterNode:
    """This process's node: its listener bound on the first free port of its range."""
    host, first = _address(options.advertise)
    listen_host, listen_first = _address(options.listen) if options.listen else (host, first)
    error: OSError | None = None
    for i in range(max(1, options.workers)):
        port = listen_first + i if listen_first else 0
        try:
            forwarder = NodeForwarder(
                (listen_host, port),
                format_address(host, first + i) if first else None,  # 0: the port bound
                secret,
            )
        except OSError as exc:
            error = exc
            continue
        break
    else:
        last = format_address(listen_host, listen_first + max(1, options.workers) - 1)
        raise ConfigError(
            f"no port to listen for the other nodes on, "
            f"{format_address(listen_host, listen_first)} to {last}: {error}"
        )
    settings = ClusterSettings(
        dsn=options.url,
        advertise=forwarder.address,
        secret=secret,
        cache=persist / "cache" / str(os.getpid()),
        lease_seconds=options.lease_seconds,
    )
    return ClusterNode(settings, forwarder)
