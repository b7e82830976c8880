"""Descriptor fields a node acts on are checked where a descriptor is accepted.

Regression of a signed descriptor whose host no node can send to: ``"\\u00fc" * 70`` made
``socket.sendto`` raise TypeError (not OSError) in every gateway worker that forwarded to
it, and ``"a b"`` was listed too. The authority and the client now refuse any host outside
the grammar (IPv4 literal or LDH name), with a DirectoryFieldError naming the field.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from directory_support import make_node
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from mixnode.config import AuthoritySection, DirAuthConfig, DirectorySection
from mixnode.dirauth import Authority, AuthorityEvent, RunningAuthority
from mixnode.directory_client import DirectoryClient, FetchEvent, publish_report
from overlay import (
    VOICE,
    DirectoryFieldError,
    NodeDescriptor,
    NodeRole,
    SignedDocument,
    TopologyDocument,
    build_document,
    canonical_json,
    descriptor_host_problem,
    sign_document,
)
from overlay._topology import _SIG_DESC

EPOCH = 40
EPOCH_S = 600
NOW = EPOCH * EPOCH_S + 1
AUTH_SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
AUTH_KEYS = [bytes(SigningKey(s).verify_key) for s in AUTH_SEEDS]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The two hosts of the report, and one of each kind the grammar leaves out.
REPORTED = ["\u00fc" * 70, "a b"]
UNUSABLE = REPORTED + [
    "0.0.0.0",  # wildcard
    "0.1.2.3",  # 0.0.0.0/8
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "255.255.255.255",  # broadcast
    "240.0.0.1",  # reserved
    "999.1.1.1",  # not an address, and all digits
    "1.2.3",  # inet_aton would read it as 1.2.0.3
    "1.2.3.0x4",  # inet_aton would read it as 1.2.3.4
    "01.2.3.4",  # leading zero (octal to some resolvers)
    "::1",  # IPv6
    "<broadcast>",  # CPython's sendto would broadcast
    "-a.example",
    "a-.example",
    "a..example",
    ".example",
    "a_b.example",
    "x" * 64 + ".example",  # a label longer than 63
    ("a" * 63 + ".") * 4,  # 256 characters
    "ex\u00e4mple.net",  # IDN, not LDH
    "a\x00b",
    "a\tb",
    "",
]


def _descriptor(host: str, *, port: int = 9, layer: int = 1) -> tuple[dict[str, object], bytes]:
    """A layer-``layer`` mix's descriptor as JSON, with any host; and its signing seed."""
    good, seed = make_node(0, NodeRole.MIX, layer, EPOCH, EPOCH_S)
    obj = json.loads(good.to_bytes())
    obj["host"], obj["port"] = host, port
    return obj, seed


def _parse(obj: dict[str, object]) -> NodeDescriptor:
    return NodeDescriptor.from_bytes(canonical_json(obj))


def _body(obj: dict[str, object], seed: bytes) -> bytes:
    data = canonical_json(obj)
    sig = SigningKey(seed).sign(_SIG_DESC + data).signature
    return canonical_json({"descriptor": data.decode("ascii"), "signature": sig.hex()})


def _authority(tmp: Path) -> Authority:
    cfg = DirAuthConfig(
        AuthoritySection("auth0", "127.0.0.1", 31999, tmp, 5.0, "voice"),
        DirectorySection(
            authorities=("http://127.0.0.1:31999",),
            authority_keys=tuple(AUTH_KEYS),
            threshold=2,
            epoch_length_s=EPOCH_S,
            genesis_s=0,
            mix_layers=3,
        ),
    )
    return Authority(cfg, AUTH_SEEDS[0], clock=lambda: NOW, fetch=lambda *a: b"[]")


# --------------------------------------------------------------------------------------
# Named regressions


def test_the_reported_host_is_printable_and_crashes_sendto_with_a_type_error() -> None:
    """Why the old check (printable, <= 253) was not enough: the failure is not OSError."""
    host = REPORTED[0]
    assert host.isprintable() and len(host) <= 253
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(TypeError, match="encoding of hostname failed"):
            s.sendto(b"x", (host, 9))


@pytest.mark.parametrize("host", UNUSABLE, ids=repr)
def test_the_authority_refuses_an_unusable_host_naming_the_field(tmp_path: Path, host: str) -> None:
    auth = _authority(tmp_path)
    with pytest.raises(DirectoryFieldError, match=r"^descriptor\.host: "):
        auth.submit(_body(*_descriptor(host)))
    assert auth.counters[AuthorityEvent.DESCRIPTOR_REFUSED] == 1
    assert auth.counters[AuthorityEvent.DESCRIPTOR_ACCEPTED] == 0
    auth.build(EPOCH)
    env = auth.signed(EPOCH)
    assert env is not None and TopologyDocument.from_bytes(env.document).nodes == ()


def test_the_reported_descriptors_get_400_over_http(tmp_path: Path) -> None:
    """The report's exact steps: two layer-1 mixes on port 9, POSTed to a real authority."""
    running = RunningAuthority(_authority(tmp_path), "127.0.0.1", 0, 60.0).start()
    try:
        url = f"http://127.0.0.1:{running.port}"
        for host in REPORTED:
            req = urllib.request.Request(
                f"{url}/v1/descriptor", data=_body(*_descriptor(host)), method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=5)
            assert info.value.code == 400
            assert json.loads(info.value.read())["error"].startswith("descriptor.host: ")
        report = publish_report([url], _body(*_descriptor(REPORTED[1])))
        assert report.accepted == ()
        assert report.refused[0].startswith(f"{url}: HTTP 400 descriptor.host: ")
        assert publish_report([url], _body(*_descriptor("mix1.example.net"))).accepted == (url,)
    finally:
        running.stop()


def test_a_signed_document_listing_an_unusable_host_is_refused_by_the_client() -> None:
    """Honest authorities never sign one; a client refuses it whole and asks the others."""
    ok = [_parse(_descriptor("127.0.0.1")[0]) for _ in range(2)]
    doc = build_document(EPOCH, epoch_length_s=EPOCH_S, geometry=VOICE, descriptors=ok)
    obj = json.loads(doc.to_bytes())
    obj["nodes"][1]["host"] = REPORTED[0]
    bad = canonical_json(obj)
    with pytest.raises(DirectoryFieldError, match=r"^document\.nodes\[1\]\.host: "):
        TopologyDocument.from_bytes(bad)

    def envelope(data: bytes) -> bytes:
        return SignedDocument(data, tuple(sign_document(data, s) for s in AUTH_SEEDS)).to_bytes()

    served = {"http://a0": envelope(bad), "http://a1": envelope(doc.to_bytes())}
    client = DirectoryClient(
        list(served), AUTH_KEYS, 2, geometry=VOICE, clock=lambda: NOW,
        get=lambda url, _t: served[url.split("/v1/")[0]],
    )  # fmt: skip
    assert client.fetch() == doc
    assert client.counters[FetchEvent.DOCUMENT_REFUSED] >= 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", True), ("port", 0), ("port", 65536), ("port", "9"), ("layer", True),
     ("layer", "1"), ("name", "\x1b[31m"), ("name", "n" * 65), ("name", 7)],
)  # fmt: skip
def test_ports_layer_and_name_are_checked_by_type_and_range(field: str, value: object) -> None:
    obj, _ = _descriptor("127.0.0.1")
    good = _parse(obj)
    args = {f: getattr(good, f) for f in NodeDescriptor.__slots__}  # type: ignore[attr-defined]
    args[field] = value
    with pytest.raises(DirectoryFieldError, match=rf"^descriptor\.{field}: "):
        NodeDescriptor(**args)


# --------------------------------------------------------------------------------------
# The kind: hosts outside the grammar are refused; hosts inside it are safe for sendto

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}", re.ASCII)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(rf"({_LABEL}\.)*[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.?", re.ASCII)


def _in_grammar(host: str) -> bool:
    """The grammar written out independently: a usable IPv4 literal, or an LDH name."""
    if _IPV4.fullmatch(host):
        first = int(host.split(".")[0])
        return 0 < first < 224
    return len(host) <= 253 and _NAME.fullmatch(host) is not None


_names = st.from_regex(_NAME, fullmatch=True).filter(lambda h: len(h) <= 253)
_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    _names,
    _names.flatmap(  # a name with one character put in somewhere
        lambda h: st.tuples(st.integers(0, len(h)), st.characters()).map(
            lambda t: h[: t[0]] + t[1] + h[t[0] :]
        )
    ),
    st.text(max_size=300),
    st.text(alphabet="0123456789.x", max_size=20),
)


@given(_hosts)
@settings(FUZZ, max_examples=500)
def test_a_host_is_accepted_exactly_when_it_is_in_the_grammar(host: str) -> None:
    assert (descriptor_host_problem(host) is None) is _in_grammar(host), host
    obj, _ = _descriptor(host)
    try:
        _parse(obj)
    except DirectoryFieldError as exc:
        assert not _in_grammar(host) and exc.path == "descriptor.host", (host, str(exc))
    else:
        assert _in_grammar(host)


@given(_hosts, st.integers(-1, 70000))
@settings(FUZZ, max_examples=300)
def test_every_accepted_address_converts_as_sendto_does(host: str, port: int) -> None:
    """What sendto((host, port)) does before it resolves a name cannot raise for a
    descriptor that validates: only the resolver or the network can fail (OSError)."""
    obj, _ = _descriptor(host, port=port)
    try:
        desc = _parse(obj)
    except DirectoryFieldError:
        return
    assert 1 <= desc.port <= 65535 and type(desc.port) is int
    # socket.sendto passes a compact-ASCII str through verbatim, else encodes it with
    # the "idna" codec (TypeError on failure); a NUL is a TypeError too.
    assert desc.host.isascii() and "\x00" not in desc.host
    assert desc.host.encode("idna").decode("ascii").lower() == desc.host.lower()
    try:
        packed = socket.inet_aton(desc.host)
    except OSError:  # a name: no resolver would read it as an address
        assert not re.fullmatch(r"[0-9.]+", desc.host)
        assert re.search(r"[A-Za-z]", desc.host.rstrip(".").rsplit(".", 1)[-1][:1])
    else:
        assert socket.inet_ntoa(packed) == desc.host  # a literal is read as written
        assert 0 < packed[0] < 224


@given(st.ip_addresses(network="127.0.0.0/8").map(str), st.integers(1, 65535))
@settings(FUZZ, max_examples=50)
def test_accepted_loopback_addresses_work_with_a_real_sendto(host: str, port: int) -> None:
    assume(descriptor_host_problem(host) is None)
    obj, _ = _descriptor(host, port=port)
    desc = _parse(obj)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"x", (desc.host, desc.port))
        except OSError:
            pass  # the only failure a listed address may cause
