"""Which webhook URLs the server will call (SPEC §11): a client picks the URL, so it is an SSRF vector.

Only `http` and `https`, to a host the operator allows (WEBHOOK_ALLOWED_HOSTS: names, `*.domain`, addresses,
networks; empty: webhooks are off). Every address a name resolves to must be public, or named by an entry
as an address or network: a loopback, link-local, private, shared or metadata address is reached only when
the operator wrote it down. The check runs when the job is created (a refusal is a 422 naming
`webhook_url`) and again at every delivery, which then connects to the very address it checked: a name
that resolves elsewhere the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2_048
RESOLVE_SECONDS = 2.0


class RefusedUrl(Exception):
    """A webhook URL the server will not call; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked webhook URL: where to connect, and what to tell the server there."""

    url: str  # as the client gave it
    scheme: str
    host: str  # as named in the URL (the `Host` header and TLS server name)
    port: int
    address: IPAddress  # the checked address to connect to


class WebhookPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []  # from `*.example.com`: `.example.com`
        self.networks: list[IPNetwork] = []
        for entry in (item.strip().lower().rstrip(".") for item in allowed):
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry)

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def parse(self, url: str) -> SplitResult:
        """`url` if its form and host are allowed (no lookup yet); raises `RefusedUrl`."""
        if not self.enabled:
            raise RefusedUrl("webhooks are off on this server (its operator allows no hosts: WEBHOOK_ALLOWED_HOSTS)")
        if len(url) > MAX_URL_LENGTH:
            raise RefusedUrl(f"must be at most {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise RefusedUrl(f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise RefusedUrl("must be an http or https URL")
        if not parts.hostname:
            raise RefusedUrl("names no host")
        if parts.username is not None or parts.password is not None:
            raise RefusedUrl("must not carry credentials (sign-in is the webhook signature's job)")
        if port == 0:
            raise RefusedUrl("names port 0")
        if not self._host_allowed(parts.hostname):
            raise RefusedUrl(f"host {parts.hostname!r} is not among the hosts this server may call")
        return parts

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        address = _address(host)
        if address is not None:
            return any(address in network for network in self.networks)
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def permits(self, address: IPAddress) -> bool:
        """Whether the server may connect to `address`: a public one, or one an entry names."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return True
        return address.is_global and not address.is_multicast

    async def target(self, url: str) -> Target:
        """`url` checked and resolved: the first of its addresses the server may connect to. Raises
        `RefusedUrl` when its host is not allowed or any of its addresses is refused, and `OSError` when
        the name does not resolve now (a delivery tries again later)."""
        parts = self.parse(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await _resolve(host, port)
        refused = [address for address in addresses if not self.permits(address)]
        if refused:
            raise RefusedUrl(
                f"host {host!r} resolves to {refused[0]}, an address this server does not call "
                "(loopback, private, link-local or metadata) unless WEBHOOK_ALLOWED_HOSTS names it"
            )
        return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_SECONDS):
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return addresses
