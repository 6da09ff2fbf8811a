"""The SSRF guard: a table of addresses and spellings, URLs it never fetches, and proof
through real connections that it checks the address it connects to, on every hop."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import Counter

import pytest

from fixtures.server import LoopbackServer
from function import fetch, guard
from function.config import load_settings
from function.errors import FetchFailed, ForbiddenUrl, InvalidUrl, ItemError, UrlTooLong

PUBLIC = "93.184.216.34"
RECORDS = {  # the resolver stub's DNS
    "public.test": [PUBLIC],
    "public6.test": ["2606:4700:4700::1111"],
    "loopback.test": ["127.0.0.1"],
    "private.test": ["10.1.2.3"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": [PUBLIC, "10.0.0.1"],
    "mixed6.test": ["2606:4700:4700::1111", "::1"],
    "zoned.test": ["fe80::1%eth0"],
}


def stub_resolver(host: str, port: int) -> list[str]:
    """Names from RECORDS; any other name (an IP spelling the guard failed to recognise)
    resolves to a public address, so a missed spelling shows up as "allowed"."""
    return RECORDS.get(host, [PUBLIC])


REFUSED = [
    # loopback
    "127.0.0.1", "127.255.255.254", "::1", "[::1]",
    # RFC 1918 and RFC 4193 (fc00::/7)
    "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "fc00::1", "fd12:3456::1",
    # link-local, cloud metadata endpoints included
    "169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254",
    # CGNAT, multicast, unspecified, reserved, broadcast, documentation, benchmarking
    "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250", "ff02::1",
    "0.0.0.0", "::", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "2001:db8::1",
    # IPv6 forms that carry a private IPv4: mapped, compatible, 6to4, NAT64, Teredo
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:7f00:1", "::127.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    # decimal, octal, hex and short spellings of 127.0.0.1, and a trailing dot
    "2130706433", "0177.0.0.1", "0x7f000001", "0x7f.0.0.1", "017700000001", "127.1", "127.0.1",
    "127.0.0.1.", "0", "0x0a.1",
    # names that resolve to refused addresses, or to a mix of public and private
    "loopback.test", "private.test", "metadata.test", "mixed.test", "mixed6.test", "zoned.test",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "[2606:4700:4700::1111]", "public.test",
           "public6.test", "example.com"]


@pytest.mark.parametrize("host", REFUSED)
def test_refused_addresses(host):
    with pytest.raises(ForbiddenUrl):
        guard.resolve(host, 80, allow_private=False, resolver=stub_resolver)


@pytest.mark.parametrize("host", ALLOWED)
def test_allowed_addresses(host):
    addresses = guard.resolve(host, 80, allow_private=False, resolver=stub_resolver)
    assert addresses and all(guard.is_public(a) for a in addresses)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.0.0.1.", "[::ffff:127.0.0.1]"])
def test_ip_spellings_mean_the_address_libc_connects_to(host):
    (address,) = guard.resolve(host, 80, allow_private=True, resolver=stub_resolver)
    assert address in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::ffff:127.0.0.1"))


@pytest.mark.parametrize("host", ["private.test", "metadata.test", "mixed.test", "mixed6.test", "zoned.test"])
def test_a_refusal_does_not_say_which_internal_address_a_name_has(host):
    """The message goes back to whoever sent the URL: it must not map the cluster for them."""
    with pytest.raises(ForbiddenUrl) as caught:
        guard.resolve(host, 80, allow_private=False, resolver=stub_resolver)
    assert host in caught.value.message
    for address in ("10.", "169.254", "::1", "fe80", PUBLIC):
        assert address not in caught.value.message


def test_allow_private_lifts_only_the_address_check():
    assert guard.resolve("loopback.test", 80, allow_private=True, resolver=stub_resolver) == [
        ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(ForbiddenUrl):
        guard.check_url("file:///etc/passwd", 2048)  # schemes and credentials stay refused


def test_a_name_that_does_not_resolve_is_fetch_failed():
    def failing(host, port):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(FetchFailed):
        guard.resolve("nowhere.test", 80, allow_private=False, resolver=failing)
    with pytest.raises(FetchFailed):
        guard.resolve("nowhere.test", 80, allow_private=False, resolver=lambda host, port: [])


@pytest.mark.parametrize(
    "url, error",
    [
        ("file:///etc/passwd", ForbiddenUrl),
        ("ftp://example.com/bird.jpg", ForbiddenUrl),
        ("gopher://example.com:70/_GET", ForbiddenUrl),
        ("data:image/png;base64,iVBORw0KGgo=", ForbiddenUrl),
        ("javascript:alert(1)", ForbiddenUrl),
        ("dict://example.com:11211/stat", ForbiddenUrl),
        ("example.com/bird.jpg", ForbiddenUrl),
        ("http://user:pw@example.com/bird.jpg", ForbiddenUrl),
        ("http://user@example.com/bird.jpg", ForbiddenUrl),
        ("https://:pw@example.com/bird.jpg", ForbiddenUrl),
        ("http:///bird.jpg", InvalidUrl),
        ("http://example.com:99999/bird.jpg", InvalidUrl),
        ("http://[::1/bird.jpg", InvalidUrl),
        ("https://example.com/" + "a" * 2048, UrlTooLong),
    ],
)
def test_urls_never_fetched(url, error):
    with pytest.raises(error) as caught:
        guard.check_url(url, max_length=2048)
    assert caught.value.code == {ForbiddenUrl: "forbidden_url", InvalidUrl: "invalid_url",
                                 UrlTooLong: "url_too_long"}[error]


def test_a_url_at_the_length_limit_passes():
    url = "https://example.com/"
    guard.check_url(url + "a" * (2048 - len(url)), max_length=2048)


# --- through real connections -----------------------------------------------------------


def guard_on(**env: str):
    return load_settings({"CLASSIFIER_MAX_REDIRECTS": "3", **env})


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1.", "[::ffff:127.0.0.1]",
     "localhost"],
)
def test_loopback_in_any_spelling_is_never_contacted(host):
    with LoopbackServer() as server:
        server.add("/secret.png", b"secret")
        url = f"http://{host}:{server.port}/secret.png"
        config = guard_on()
        with pytest.raises(ItemError) as caught:
            fetch.fetch(fetch.make_session(config), url, config)
        assert caught.value.code == "forbidden_url"
        assert server.hits == {}


class FakeDns:
    """socket.getaddrinfo for `*.test` names, answering each query with the next of its
    records (the last repeats): a DNS server whose zero-TTL answers change between two
    lookups, as in DNS rebinding. Numeric hosts go to the real getaddrinfo."""

    def __init__(self, monkeypatch, records: dict[str, list[str]]):
        self.queries: Counter[str] = Counter()
        real = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            if isinstance(host, str) and host.endswith(".test"):
                answers = records[host]
                address = answers[min(self.queries[host], len(answers) - 1)]
                self.queries[host] += 1
                return real(address, port, *args, **kwargs)
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def public_stand_in(monkeypatch):
    """A loopback server on 127.0.0.2 that the guard treats as public, and a trap: a
    listener on 127.0.0.1 at the same port that no fetch may ever reach.

    Offline there is no public address to connect to, so exactly one loopback address is
    declared public by patching `guard.is_public`; everything else (resolution, the
    refusal of every other address, redirects, the connection itself) is the real code.
    """
    real_is_public = guard.is_public
    stand_in_public = ipaddress.ip_address("127.0.0.2")
    monkeypatch.setattr(guard, "is_public", lambda address: address == stand_in_public or real_is_public(address))
    with contextlib.ExitStack() as stack:
        for _ in range(20):  # the server's port is almost always free on 127.0.0.1 too
            server = stack.enter_context(LoopbackServer(host="127.0.0.2"))
            trap = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                trap.bind(("127.0.0.1", server.port))
                break
        else:
            pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
        trap.listen()
        trap.setblocking(False)
        yield server, trap


def trap_was_reached(trap: socket.socket) -> bool:
    try:
        connection, _ = trap.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(public_stand_in, monkeypatch):
    """The first answer (127.0.0.2, "public") is checked; a second lookup would get
    127.0.0.1 and hit the trap. The fetch must succeed on one DNS query."""
    server, trap = public_stand_in
    dns = FakeDns(monkeypatch, {"rebind.test": ["127.0.0.2", "127.0.0.1"]})
    url = server.add("/bird.png", b"\x89PNG bird").replace("127.0.0.2", "rebind.test")
    config = guard_on()
    assert fetch.fetch(fetch.make_session(config), url, config) == b"\x89PNG bird"
    assert dns.queries["rebind.test"] == 1
    assert not trap_was_reached(trap)


def test_one_resolver_call_per_connection(monkeypatch):
    """With the address check lifted, the resolver stub is still the only resolver: the
    system one cannot resolve `.test` names, so a second lookup would fail the fetch."""
    calls: list[str] = []

    def counting(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    real = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".test"):
            raise socket.gaierror(-2, f"no DNS in this test (asked for {host!r})")
        return real(host, *args, **kwargs)

    with LoopbackServer() as server:
        url = server.add("/bird.png", b"\x89PNG").replace("127.0.0.1", "counted.test")
        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
        config = guard_on(CLASSIFIER_ALLOW_PRIVATE_URLS="1")
        session = fetch.make_session(config, resolver=counting)
        assert fetch.fetch(session, url, config) == b"\x89PNG"
        assert calls == ["counted.test"]


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{trap}/secret",
        "http://2130706433:{trap}/secret",
        "http://0x7f.1:{trap}/secret",
        "http://[::ffff:127.0.0.1]:{trap}/secret",
        "http://localhost:{trap}/secret",
        "http://private.test:{trap}/secret",
        "http://user:pw@public.test:{trap}/secret",
        "file:///etc/passwd",
    ],
)
def test_a_redirect_to_a_private_address_is_refused(public_stand_in, monkeypatch, location):
    """Hop 1 (public.test, "public") is allowed; hop 2 is checked again and refused."""
    server, trap = public_stand_in
    FakeDns(monkeypatch, {"public.test": ["127.0.0.2"], "private.test": ["127.0.0.1"]})
    url = server.add("/hop", status=302, headers={"Location": location.format(trap=server.port)})
    config = guard_on()
    with pytest.raises(ItemError) as caught:
        fetch.fetch(fetch.make_session(config), url.replace("127.0.0.2", "public.test"), config)
    assert caught.value.code == "forbidden_url"
    assert server.hits == {"/hop": 1}
    assert not trap_was_reached(trap)


def test_a_redirect_to_a_public_address_is_followed(public_stand_in, monkeypatch):
    """The control for the test above: the same first hop, a public second one."""
    server, _ = public_stand_in
    FakeDns(monkeypatch, {"public.test": ["127.0.0.2"]})
    image = server.add("/bird.png", b"\x89PNG").replace("127.0.0.2", "public.test")
    url = server.add("/hop", status=302, headers={"Location": image}).replace("127.0.0.2", "public.test")
    config = guard_on()
    assert fetch.fetch(fetch.make_session(config), url, config) == b"\x89PNG"


@pytest.mark.parametrize("hops, code", [(3, None), (4, "too_many_redirects")])
def test_redirects_are_limited(hops, code):
    config = guard_on(CLASSIFIER_ALLOW_PRIVATE_URLS="1")
    with LoopbackServer() as server:
        url = server.add("/bird.png", b"\x89PNG")
        for hop in range(hops):
            url = server.add(f"/hop{hop}", status=302, headers={"Location": url})
        session = fetch.make_session(config)
        if code is None:
            assert fetch.fetch(session, url, config) == b"\x89PNG"
        else:
            with pytest.raises(ItemError) as caught:
                fetch.fetch(session, url, config)
            assert caught.value.code == code
            assert "/bird.png" not in server.hits
