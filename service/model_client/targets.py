"""The model servers a gRPC target names, one address each.

Predictions take turns over every server a target names (the channel's ``round_robin``), so
a label move is done only when *each* of them has applied it: ``Lifecycle`` asks every
address this module finds, not just whichever server the shared channel picks next.

- ``dns:///name:port`` (a headless Service) and a plain ``name:port``: every address the
  name resolves to now, as gRPC's own DNS resolver would find them;
- ``ipv4:a:port,b:port`` and ``ipv6:[a]:port,...``: the listed addresses;
- anything else (``unix:``, an unknown scheme): the target itself, as one server.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

DEFAULT_PORT = 443  # gRPC's own default for a DNS name without a port


def server_addresses(target: str) -> list[str]:
    """One gRPC target per model server ``target`` names, in a stable order.

    Blocking (a DNS lookup): call it in a thread from async code. A name that does not
    resolve (yet) yields the target itself, whose own calls then report the failure.
    """
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return [f"{scheme}:{address}" for address in rest.split(",") if address]
    if scheme == "dns":
        # dns:[//authority]/host[:port]: the authority names a DNS server, not the host.
        hostport = urlsplit(target).path.lstrip("/")
    elif "/" in target or scheme in ("unix", "unix-abstract", "vsock"):
        return [target]
    else:
        hostport = target
    host, port = _split_host_port(hostport)
    if host is None:
        return [target]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [target]
    addresses = []
    for family, *_, sockaddr in found:
        ip, number = str(sockaddr[0]), int(sockaddr[1])
        address = f"ipv6:[{ip}]:{number}" if family == socket.AF_INET6 else f"ipv4:{ip}:{number}"
        if address not in addresses:
            addresses.append(address)
    return sorted(addresses) or [target]


def _split_host_port(hostport: str) -> tuple[str | None, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or a bare host; (None, 0) if malformed."""
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:  # a bare name, or a bare IPv6 address
        host, port_text = hostport, ""
    if not host:
        return None, 0
    if not port_text:
        return host, DEFAULT_PORT
    return (host, int(port_text)) if port_text.isdigit() else (None, 0)
