"""The address policy: every spelling of a forbidden address is refused, before any connection.

These tests never connect anywhere: private, link-local and reserved addresses are checked on
the policy itself and on a resolver fed from a fixed table.
"""

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from crawler.errors import ConfigError
from crawler.netpolicy import (
    AddressPolicy,
    BadURLError,
    ForbiddenAddressError,
    PolicyResolver,
    parse_ip,
    refusal_reason,
)
from tests.serve_support import StaticResolver

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "0x7f000001",
    "017700000001",
    "127.1",
    "0x7F.0.0.1",
]
REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "::1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "fd00::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "fec0::1": "site-local",
    "100.64.0.1": "non-global",
    "192.0.2.1": "private",
    "::ffff:127.0.0.1": "IPv6 form of a loopback",
    "::ffff:10.0.0.1": "IPv6 form of a private",
    "2002:a9fe:a9fe::1": "IPv6 form of a link-local",
    "64:ff9b::7f00:1": "IPv6 form of a loopback",
    "64:ff9b:1::a00:1": "local-use NAT64",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "IPv6 form of a loopback",
    "::7f00:1": "reserved",
}
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_every_ipv4_spelling_of_loopback_is_an_address(spelling: str) -> None:
    assert parse_ip(spelling) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize("host", ["example.com", "localhost", "1.2.3.4.5", "256.1.1.1", "09.1.1.1"])
def test_names_and_impossible_numbers_are_not_addresses(host: str) -> None:
    assert parse_ip(host) is None


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from(["{:d}", "0{:o}", "0x{:x}"]))
def test_legacy_spellings_read_as_the_c_library_reads_them(
    number: int, parts: int, spelling: str
) -> None:
    # The last part fills the bytes that the leading parts leave, as inet_aton does.
    packed = number.to_bytes(4, "big")
    leading = [spelling.format(byte) for byte in packed[: parts - 1]]
    last = spelling.format(int.from_bytes(packed[parts - 1 :], "big"))
    text = ".".join([*leading, last])
    assert parse_ip(text) == ipaddress.IPv4Address(socket.inet_aton(text))


@pytest.mark.parametrize(("address", "reason"), REFUSED.items())
def test_non_public_addresses_are_refused_with_their_kind(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [f"http://{spelling}/a.jpg" for spelling in LOOPBACK_SPELLINGS]
    + [
        "http://[::1]/a.jpg",
        "http://[::ffff:127.0.0.1]:8080/",
        "https://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00::1]/",
    ],
)
def test_urls_naming_forbidden_addresses_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenAddressError, match="refusing to fetch from"):
        AddressPolicy().check_url(URL(url))


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "/etc/passwd", "http:///x"],
)
def test_only_http_urls_with_a_host_are_fetched(url: str) -> None:
    with pytest.raises(BadURLError):
        AddressPolicy().check_url(URL(url))


def test_host_names_are_left_to_the_resolver() -> None:
    AddressPolicy().check_url(URL("https://images.example.com/a.jpg"))


def test_an_allowed_address_and_port_exempts_only_that_port() -> None:
    policy = AddressPolicy(["127.0.0.1:8080"])
    policy.check_url(URL("http://127.0.0.1:8080/a.jpg"))
    with pytest.raises(ForbiddenAddressError):
        policy.check_url(URL("http://127.0.0.1:8081/a.jpg"))


def test_allowed_networks_and_names() -> None:
    policy = AddressPolicy(["10.0.0.0/8", "Images.Internal", "[::1]:9000"])
    policy.check_url(URL("http://10.1.2.3/a.jpg"))
    policy.check_url(URL("http://[::1]:9000/a.jpg"))
    assert policy.name_allowed("images.internal.", 80)
    assert not policy.name_allowed("other.internal", 80)
    with pytest.raises(ForbiddenAddressError):
        policy.check_url(URL("http://192.168.0.1/a.jpg"))


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.0/33",
        "host:notaport",
        "",
        "   ",
        "http://x/",
        "*",
        "*.internal",
        "user@images.internal",
        "exa mple.internal",
        "xn--a.internal",  # invalid punycode
        "-images.internal",
        "images.internal:0",
        "127.0.0.1:99999",
        "[images]:80",
        "a:b:c",
    ],
)
def test_bad_allow_list_entries_name_the_setting_and_the_entry(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"^serve\.allow_hosts: ") as caught:
        AddressPolicy(["images.internal", entry])
    assert repr(entry) in str(caught.value) or "empty" in str(caught.value)


@pytest.mark.parametrize(
    "entries",
    [
        ["0.0.0.0/0"],
        ["::/0"],
        ["0.0.0.0/1", "128.0.0.0/1"],
        ["::ffff:0:0/96"],  # every IPv4 address, mapped
        ["64:ff9b::/96"],  # every IPv4 address, through NAT64
        ["2002::/16"],  # every IPv4 address, as 6to4
        ["::/1"],
    ],
)
def test_an_allow_list_covering_every_address_needs_the_flag(entries: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"switches the address policy off.*allow_all_hosts"):
        AddressPolicy(entries)
    AddressPolicy(entries, allow_all=True)


def test_with_the_flag_an_allow_list_of_everything_lets_loopback_through() -> None:
    AddressPolicy(["0.0.0.0/0"], allow_all=True).check_url(URL("http://127.0.0.1/a.jpg"))


def test_wide_but_not_total_allow_lists_are_taken() -> None:
    AddressPolicy(["10.0.0.0/8", "0.0.0.0/1", "fd00::/8", "2002:a00::/24", "0.0.0.0"])


TABLE = {
    "metadata.internal": ["169.254.169.254"],
    "intranet.test": ["10.0.0.1", "fd00::1"],
    "mixed.test": ["10.0.0.1", "93.184.216.34"],
    "public.test": ["93.184.216.34"],
    "rebind.test": ["::ffff:127.0.0.1"],
}


@pytest.mark.parametrize("host", ["metadata.internal", "intranet.test", "rebind.test"])
async def test_resolver_refuses_names_with_only_forbidden_addresses(host: str) -> None:
    resolver = PolicyResolver(AddressPolicy(), StaticResolver(TABLE))
    with pytest.raises(ForbiddenAddressError, match=f"refusing to fetch from {host}"):
        await resolver.resolve(host, 80)


async def test_resolver_returns_only_the_allowed_addresses() -> None:
    resolver = PolicyResolver(AddressPolicy(), StaticResolver(TABLE))
    results = await resolver.resolve("mixed.test", 443)
    assert [result["host"] for result in results] == ["93.184.216.34"]


async def test_resolver_honours_the_allow_list() -> None:
    resolver = PolicyResolver(AddressPolicy(["intranet.test"]), StaticResolver(TABLE))
    results = await resolver.resolve("intranet.test", 80)
    assert [result["host"] for result in results] == ["10.0.0.1", "fd00::1"]


async def test_resolver_refuses_localhost_from_the_system_resolver() -> None:
    resolver = PolicyResolver(AddressPolicy())
    try:
        with pytest.raises(ForbiddenAddressError, match="loopback"):
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()
