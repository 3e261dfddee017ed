"""Which addresses the HTTP API may fetch images from: the defence against request forgery.

A fetch-this-URL API must not become a way into the machine's own network. The policy refuses
every address that is not globally routable (loopback, private, link-local, multicast, reserved,
unspecified, shared, site-local), also when written as IPv4 inside IPv6 (mapped, 6to4, NAT64,
Teredo) or in the legacy IPv4 spellings that ``inet_aton`` accepts (``2130706433``,
``0177.0.0.1``, ``0x7f.1``). It is applied twice: to the URL of every hop before a request
(``check_url``) and to every address DNS returns (``PolicyResolver``), which hands aiohttp only
the addresses it checked, so the address that was checked is the one connected to.

``serve.allow_hosts`` exempts host names, addresses and networks (optionally with a port) from
the policy; it exists for tests and trusted internal deployments. Each entry is checked when
the server starts (a bad one is an error that names it), and entries that together cover
every address (``0.0.0.0/0``, ``::/0``, every IPv4 address in an IPv6 form such as
``::ffff:0:0/96``) are refused unless ``serve.allow_all_hosts`` says that is meant: they
switch the policy off.
"""

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from crawler.errors import ConfigError, CrawlerError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FETCHABLE_SCHEMES = ("http", "https")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_PART_LIMITS = {1: 1 << 32, 2: 1 << 24, 3: 1 << 16, 4: 1 << 8}


class ForbiddenAddressError(CrawlerError):
    """The URL names, or resolves to, an address the API refuses to fetch from."""

    status = 400
    reason = "forbidden_address"


class BadURLError(CrawlerError):
    status = 400
    reason = "bad_url"


def parse_ip(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling the C library accepts; None for a
    host name. ``[::1]``, ``::ffff:127.0.0.1``, ``2130706433``, ``0177.0.0.1`` and ``0x7f.1``
    are all addresses."""
    text = host.strip().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _parse_legacy_ipv4(text)


def _parse_legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    # inet_aton's grammar: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the last
    # part fills the remaining bytes, so "127.1" is 127.0.0.1 and "2130706433" is too.
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values = [value for part in parts if (value := _parse_ipv4_part(part)) is not None]
    if len(values) != len(parts):
        return None
    *leading, last = values
    if any(value >= 256 for value in leading) or last >= _IPV4_PART_LIMITS[len(parts)]:
        return None
    number = last
    for position, value in enumerate(leading):
        number |= value << (24 - 8 * position)
    return ipaddress.IPv4Address(number)


def _parse_ipv4_part(part: str) -> int | None:
    lowered = part.lower()
    if lowered.startswith("0x"):
        digits, base = lowered[2:] or "0", 16
    elif len(lowered) > 1 and lowered.startswith("0"):
        digits, base = lowered[1:], 8
    else:
        digits, base = lowered, 10
    if not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why the API refuses to connect to ``address`` (e.g. ``"loopback"``), or None if it may."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = refusal_reason(embedded)
        return f"IPv6 form of a {inner}" if inner else None
    if isinstance(address, ipaddress.IPv6Address) and address in _NAT64_LOCAL_USE:
        return "local-use NAT64"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("site-local", getattr(address, "is_site_local", False)),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for name, applies in checks:
        if applies:
            return name
    return None if address.is_global else "non-global"


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class _AllowedName:
    name: str
    port: int | None


@dataclass(frozen=True)
class _AllowedNetwork:
    network: IPNetwork
    port: int | None


class AddressPolicy:
    """The address policy with its allow-list (``serve.allow_hosts``) of exemptions; one that
    covers every address is refused unless ``allow_all``."""

    def __init__(self, allow_hosts: Iterable[str] = (), *, allow_all: bool = False) -> None:
        allow_hosts = list(allow_hosts)
        entries = [_parse_allow_entry(entry) for entry in allow_hosts]
        self._names = [entry for entry in entries if isinstance(entry, _AllowedName)]
        self._networks = [entry for entry in entries if isinstance(entry, _AllowedNetwork)]
        covered = _covers_everything([e.network for e in self._networks if e.port is None])
        if covered and not allow_all:
            raise ConfigError(
                f"serve.allow_hosts: {allow_hosts} allows {covered}, which switches the "
                "address policy off; set serve.allow_all_hosts = true if that is meant"
            )

    def name_allowed(self, host: str, port: int | None) -> bool:
        """Whether the allow-list names ``host`` itself (so every address it resolves to)."""
        wanted = _normalise_name(host)
        return any(e.name == wanted and e.port in (None, port) for e in self._names)

    def check_address(self, address: IPAddress, port: int | None, host: str) -> None:
        """Raise ``ForbiddenAddressError`` unless ``address`` may be connected to."""
        if any(address in e.network and e.port in (None, port) for e in self._networks):
            return
        reason = refusal_reason(address)
        if reason is not None:
            named = str(address) if host.strip("[]") == str(address) else f"{host} ({address})"
            raise ForbiddenAddressError(f"refusing to fetch from {named}: {reason} address")

    def check_url(self, url: URL) -> None:
        """Check one hop before it is requested: the scheme, and the address when the URL
        names one literally. Host names are checked on every address DNS gives for them, by
        ``PolicyResolver``."""
        if url.scheme not in FETCHABLE_SCHEMES:
            raise BadURLError(f"refusing to fetch {url}: only http and https URLs are fetched")
        host = url.raw_host
        if not host:
            raise BadURLError(f"refusing to fetch {url}: the URL has no host")
        if self.name_allowed(host, url.port):
            return
        address = parse_ip(host)
        if address is not None:
            self.check_address(address, url.port, host)


def parse_url(text: str) -> URL:
    """``text`` as a URL, or ``BadURLError`` when it is not one (bad IDNA host, bad port...)."""
    try:
        url = URL(text)
        _ = url.raw_host, url.port  # both are decoded lazily and may fail
    except (ValueError, TypeError, IndexError) as exc:  # IndexError: yarl, broken authorities
        raise BadURLError(f"{text!r} is not a valid URL: {exc or type(exc).__name__}") from None
    return url


def _normalise_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


# Where every IPv4 address has an IPv6 spelling the policy reads as that IPv4 address.
_IPV4_IN_IPV6 = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    _NAT64_WELL_KNOWN,
    ipaddress.IPv6Network("2002::/16"),  # 6to4
    ipaddress.IPv6Network("2001::/32"),  # Teredo
)
_HOST_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")


def _covers_everything(networks: Iterable[IPNetwork]) -> str | None:
    """What of the address space ``networks`` cover whole, or None if no family."""
    ipv4 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
    ipv6 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 6))
    if any(network.prefixlen == 0 for network in ipv4):
        return "every IPv4 address"
    if any(network.prefixlen == 0 for network in ipv6):
        return "every IPv6 address"
    for form in _IPV4_IN_IPV6:
        if any(form.subnet_of(network) for network in ipv6):
            return f"every IPv4 address (in the IPv6 form {form})"
    return None


def _parse_allow_entry(entry: str) -> _AllowedName | _AllowedNetwork:
    """One ``serve.allow_hosts`` entry: a network (``10.20.0.0/16``), an address (any
    spelling ``parse_ip`` reads, ``[v6]``), a host name, either of the last two with a
    ``:port``."""
    text = entry.strip()
    if not text:
        raise ConfigError("serve.allow_hosts: an entry is empty")
    if "/" in text:
        try:
            return _AllowedNetwork(ipaddress.ip_network(text, strict=False), None)
        except ValueError:
            raise ConfigError(
                f"serve.allow_hosts: {entry!r} is not a network (such as 10.20.0.0/16)"
            ) from None
    address = parse_ip(text)
    if address is not None:
        return _AllowedNetwork(ipaddress.ip_network(address), None)
    host, port = _split_port(entry, text)
    address = parse_ip(host)
    if address is not None:
        return _AllowedNetwork(ipaddress.ip_network(address), port)
    if host.startswith("["):
        raise ConfigError(f"serve.allow_hosts: {entry!r}: {host} is not an IPv6 address")
    return _AllowedName(_host_name(entry, host), port)


def _split_port(entry: str, text: str) -> tuple[str, int | None]:
    """``text`` as host and port (None without one)."""
    host, colon, port = text.rpartition(":")
    if not colon or (":" in host and not host.endswith("]")):
        return text, None
    if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError(f"serve.allow_hosts: {entry!r}: the port must be 1..65535")
    return host, int(port)


def _host_name(entry: str, host: str) -> str:
    """``host`` as the resolver will be asked for it: IDNA, lower case, no final dot."""
    try:
        name = host.encode("idna").decode("ascii").lower()
        name.encode("ascii").decode("idna")  # invalid punycode ("xn--a") fails here
    except UnicodeError:
        name = ""
    if not _HOST_NAME.fullmatch(name) or len(name) > 253:
        raise ConfigError(
            f"serve.allow_hosts: {entry!r} is not a host name, address, host:port or network"
        )
    return _normalise_name(name)


class PolicyResolver(AbstractResolver):
    """A resolver that returns only the addresses the policy allows.

    aiohttp connects to exactly the addresses its resolver returns, so filtering here leaves
    no gap between the check and the connection (a second lookup could answer differently).
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.name_allowed(host, port):
            return results
        allowed: list[ResolveResult] = []
        refusal: ForbiddenAddressError | None = None
        for result in results:
            try:
                self._policy.check_address(ipaddress.ip_address(result["host"]), port, host)
            except ForbiddenAddressError as exc:
                refusal = refusal or exc
            else:
                allowed.append(result)
        if not allowed and refusal is not None:
            raise refusal
        return allowed

    async def close(self) -> None:
        await self._inner.close()
