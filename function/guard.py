"""The SSRF guard: which addresses strangers' URLs may reach, decided once per connection.

The check and the connection use the same resolved address (see `fetch`), so a DNS
answer that changes between the two (rebinding) cannot slip a private address in.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from .errors import FetchFailed, ForbiddenUrl, InvalidUrl, UrlTooLong

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = ("http", "https")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# inet_aton accepts 2130706433, 0x7f.1, 0177.0.0.1: spellings browsers and libc resolve
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?$", re.I)


def check_url(url: str, max_length: int) -> None:
    """Refuse URLs we never fetch, whatever they resolve to."""
    if len(url) > max_length:
        raise UrlTooLong(f"URL is longer than {max_length} characters")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidUrl(f"not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ForbiddenUrl(f"scheme {parts.scheme or '(none)'!r} is not allowed: use http or https")
    if not parts.hostname:
        raise InvalidUrl("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenUrl("URLs with credentials are not allowed")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in _CGNAT
        or not address.is_global
    )


def parse_address(host: str) -> IPAddress | None:
    """An IP literal in any spelling libc accepts (dotted, decimal, octal, hex), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses getaddrinfo gives for host:port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def resolve(
    host: str, port: int, allow_private: bool, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """Addresses to connect to for host:port; refuses if any of them is not public."""
    literal = parse_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port)]
        except (OSError, UnicodeError) as exc:
            raise FetchFailed(f"cannot resolve host {host!r}: {exc}") from None
    if not addresses:
        raise FetchFailed(f"cannot resolve host {host!r}: no addresses")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                # Which address stays unsaid: it would map the cluster's network for a stranger.
                raise ForbiddenUrl(f"host {host!r} resolves to a non-public address")
    return addresses

