"""The network file: a bundle signed by a threshold of authorities, imported by ``init``.

Authorities sign their bundle and gather each other's signatures in their rounds; it is
served at ``/v1/network`` and written by ``phantom-dirauth network``; ``phantom-mixnode init
--network FILE|URL`` verifies it (trust on first use, or a pinned fingerprint) and writes
the directory section, so an operator never types a key.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from directory_support import free_ports
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from mixnode.cli import main as node_main
from mixnode.config import (
    AuthoritySection,
    DirAuthConfig,
    DirectorySection,
    load_dirauth_config,
    load_node_config,
)
from mixnode.dirauth import RunningAuthority, init_authority_key, load_authority, network_bundle
from mixnode.dirauth import main as dirauth_main
from overlay import (
    BULK,
    VOICE,
    DirectoryError,
    NetworkBundle,
    SignedNetwork,
    sign_document,
    sign_network,
)

EPOCH_S = 10  # the shortest epoch a config takes


def _seeds(n: int) -> list[bytes]:
    return [SigningKey.generate().encode() for _ in range(n)]


def _bundle(seeds: list[bytes], threshold: int = 2) -> NetworkBundle:
    return NetworkBundle(
        authorities=tuple(f"http://127.0.0.1:{31900 + i}" for i in range(len(seeds))),
        authority_keys=tuple(bytes(SigningKey(s).verify_key) for s in seeds),
        threshold=threshold,
        epoch_length_s=EPOCH_S,
        genesis_s=0,
        mix_layers=3,
        geometry="voice",
        geometry_digest=VOICE.digest,
    )


def _signed(bundle: NetworkBundle, seeds: list[bytes]) -> SignedNetwork:
    data = bundle.to_bytes()
    return SignedNetwork(data, tuple(sign_network(data, s) for s in seeds))


SEEDS = _seeds(3)
BUNDLE = _bundle(SEEDS)
FILE = _signed(BUNDLE, SEEDS).to_bytes()


# -- the bundle (sans-IO) -------------------------------------------------------------


def test_a_bundle_round_trips_and_verifies_with_its_own_threshold() -> None:
    env = SignedNetwork.from_bytes(FILE)
    assert env.verify() == BUNDLE
    assert env.verify(BUNDLE.fingerprint) == BUNDLE
    assert NetworkBundle.from_bytes(BUNDLE.to_bytes()) == BUNDLE
    assert len(BUNDLE.fingerprint) == 32


def test_too_few_signatures_a_wrong_pin_or_a_stranger_fail_closed() -> None:
    data = BUNDLE.to_bytes()
    one = SignedNetwork(data, (sign_network(data, SEEDS[0]),))
    with pytest.raises(DirectoryError, match="1 valid authority signatures, 2 required"):
        one.verify()
    # The same key twice counts once; a key the bundle does not list counts zero.
    twice = SignedNetwork(data, (sign_network(data, SEEDS[0]),) * 2)
    stranger = SignedNetwork(data, (sign_network(data, SEEDS[0]), sign_network(data, _seeds(1)[0])))
    for env in (twice, stranger):
        with pytest.raises(DirectoryError, match="required"):
            env.verify()
    # A document signature over the same digest is not a bundle signature (domain prefix).
    doc_sigs = tuple(sign_document(data, s) for s in SEEDS)
    with pytest.raises(DirectoryError, match="0 valid"):
        SignedNetwork(data, doc_sigs).verify()
    with pytest.raises(DirectoryError, match="not the expected"):
        SignedNetwork.from_bytes(FILE).verify(bytes(32))


def test_a_changed_field_no_longer_verifies() -> None:
    """An attacker rewriting an authority URL or lowering the threshold breaks the
    signatures; re-signing with keys of his own breaks the pinned fingerprint."""
    obj = json.loads(FILE)
    inner = json.loads(obj["network"])
    inner["threshold"] = 1
    obj["network"] = json.dumps(inner, separators=(",", ":"), sort_keys=True)
    with pytest.raises(DirectoryError, match="required"):
        SignedNetwork.from_bytes(json.dumps(obj).encode()).verify()
    mine = _seeds(3)
    forged = _signed(_bundle(mine, threshold=1), mine)
    forged.verify()  # trust on first use accepts any self-consistent bundle...
    with pytest.raises(DirectoryError, match="fingerprint"):
        forged.verify(BUNDLE.fingerprint)  # ...a pinned fingerprint does not


@pytest.mark.parametrize(
    "change, where",
    [
        ({"version": 2}, "network.version"),
        ({"threshold": 4}, "network"),
        ({"authority_keys": []}, "network.authority_keys"),
        ({"authorities": ["ftp://x"]}, "network.authorities[0]"),
        ({"geometry_digest": "zz"}, "network.geometry_digest"),
        ({"extra": 1}, "network.extra"),
    ],
)
def test_a_malformed_bundle_names_the_field(change: dict[str, object], where: str) -> None:
    inner = {**json.loads(BUNDLE.to_bytes()), **change}
    data = json.dumps(inner, separators=(",", ":"), sort_keys=True).encode()
    with pytest.raises(DirectoryError) as err:
        NetworkBundle.from_bytes(data)
    assert str(err.value).startswith(f"{where}:")


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2048)
    | st.integers(0, len(FILE) - 1).flatmap(
        lambda i: st.binary(min_size=1, max_size=4).map(lambda b: FILE[:i] + b + FILE[i + 1 :])
    )
)
def test_any_network_file_verifies_or_raises_a_directory_error(data: bytes) -> None:
    """Fuzz: random bytes and mutated files never raise anything but DirectoryError,
    and a file that verifies is the one the authorities signed."""
    try:
        bundle = SignedNetwork.from_bytes(data).verify()
    except DirectoryError:
        return
    assert bundle == BUNDLE


# -- authorities serving it, init importing it ------------------------------------------


@pytest.fixture
def authorities(tmp_path: Path) -> Iterator[list[RunningAuthority]]:
    """Three authorities (threshold 2) served over HTTP on loopback, rounds every 0.2 s."""
    ports = free_ports(3)
    keys = [init_authority_key(tmp_path / f"auth{i}") for i in range(3)]
    directory = DirectorySection(
        authorities=tuple(f"http://127.0.0.1:{p}" for p in ports),
        authority_keys=tuple(keys),
        threshold=2,
        epoch_length_s=EPOCH_S,
        genesis_s=0,
        mix_layers=3,
    )
    running = []
    for i, p in enumerate(ports):
        cfg = DirAuthConfig(
            AuthoritySection(f"auth{i}", "127.0.0.1", p, tmp_path / f"auth{i}", 0.2, "voice"),
            directory,
        )
        running.append(RunningAuthority(load_authority(cfg), "127.0.0.1", p, 0.2).start())
    try:
        yield running
    finally:
        for r in running:
            r.stop()


def _url(r: RunningAuthority) -> str:
    return f"http://127.0.0.1:{r.port}"


def _served_with_all_signatures(r: RunningAuthority) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{_url(r)}/v1/network", timeout=5) as resp:
            raw: bytes = resp.read()
        if len(SignedNetwork.from_bytes(raw).signatures) == 3 or time.monotonic() > deadline:
            return raw
        time.sleep(0.1)


def test_authorities_serve_one_bundle_signed_by_all(authorities: list[RunningAuthority]) -> None:
    raws = [_served_with_all_signatures(r) for r in authorities]
    envs = [SignedNetwork.from_bytes(raw) for raw in raws]
    assert all(len(e.signatures) == 3 for e in envs)
    bundle = envs[0].verify()
    assert {e.bundle for e in envs} == {envs[0].bundle}
    assert bundle == network_bundle(authorities[0].authority.cfg)
    assert bundle.threshold == 2 and bundle.geometry_digest == VOICE.digest


def _init_args(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        "init", "--config", str(tmp / f"{name}.toml"), "--role", "mix", "--layer", "1",
        "--name", name, "--data-dir", name, *extra,
    ]  # fmt: skip


def test_init_network_from_a_file_and_a_url_writes_the_directory(
    tmp_path: Path, authorities: list[RunningAuthority], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _served_with_all_signatures(authorities[1])
    fingerprint = SignedNetwork.from_bytes(raw).verify().fingerprint.hex()
    (tmp_path / "network.json").write_bytes(raw)
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    assert node_main(_init_args(nodes, "m1", "--network", str(tmp_path / "network.json"))) == 0
    out = capsys.readouterr().out
    assert f"network fingerprint {fingerprint} (NOT pinned: trust on first use)" in out
    url = _url(authorities[2])
    args = _init_args(nodes, "m2", "--network", url, "--network-fingerprint", fingerprint)
    assert node_main(args) == 0
    assert f"network fingerprint {fingerprint} (pinned)" in capsys.readouterr().out
    cfgs = [load_node_config(nodes / f"{n}.toml") for n in ("m1", "m2")]
    for cfg in cfgs:
        d = cfg.directory
        assert d.authorities == tuple(sorted(_url(r) for r in authorities))
        assert d.authority_keys == tuple(sorted(r.authority.public_key for r in authorities))
        assert (d.threshold, d.epoch_length_s, d.genesis_s, d.mix_layers) == (2, EPOCH_S, 0, 3)
    # Ports init picked itself: free, and none shared between the two nodes.
    ports = [(c.node.listen_port, c.metrics.port) for c in cfgs]
    assert len({p for pair in ports for p in pair}) == 4


def test_init_network_refuses_a_wrong_pin_a_mix_of_sources_and_a_bad_file(
    tmp_path: Path, authorities: list[RunningAuthority], capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(authorities[0])
    pinned = _init_args(tmp_path, "m", "--network", url, "--network-fingerprint", "ab" * 32)
    assert node_main(pinned) == 2
    assert "--network: " in (err := capsys.readouterr().err) and "not the expected" in err
    key = authorities[0].authority.public_key.hex()
    mixed = _init_args(tmp_path, "m", "--network", url, "--authority", url, "--authority-key", key)
    assert node_main(mixed) == 2
    assert "leave out --authority" in capsys.readouterr().err
    (tmp_path / "junk.json").write_bytes(b"[" * 100_000)
    assert node_main(_init_args(tmp_path, "m", "--network", str(tmp_path / "junk.json"))) == 2
    assert "--network: " in capsys.readouterr().err
    assert node_main(_init_args(tmp_path, "m")) == 2
    assert "give --network" in capsys.readouterr().err
    assert not (tmp_path / "m.toml").exists() and not (tmp_path / "m").exists()


def test_init_network_refuses_a_geometry_this_version_does_not_speak(tmp_path: Path) -> None:
    bundle = _bundle(SEEDS)
    odd = dataclasses.replace(bundle, geometry_digest=BULK.digest)  # "voice" named, bulk's digest
    (tmp_path / "n.json").write_bytes(_signed(odd, SEEDS).to_bytes())
    assert node_main(_init_args(tmp_path, "m", "--network", str(tmp_path / "n.json"))) == 2


def test_dirauth_network_writes_the_file_and_prints_the_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`phantom-dirauth network` asks its own running authority (here one of threshold 1,
    whose fresh init warns loudly)."""
    port = free_ports(1)[0]
    cfg_path = tmp_path / "auth.toml"
    init = ["init", "--config", str(cfg_path), "--name", "a", "--listen-port", str(port),
            "--data-dir", "a", "--epoch-length-s", str(EPOCH_S)]  # fmt: skip
    assert dirauth_main(init) == 0
    assert "WARNING: directory.threshold is 1" in capsys.readouterr().err
    cfg = load_dirauth_config(cfg_path)
    running = RunningAuthority(load_authority(cfg), "127.0.0.1", port, 0.2).start()
    try:
        out = tmp_path / "network.json"
        assert dirauth_main(["network", "--config", str(cfg_path), "--out", str(out)]) == 0
    finally:
        running.stop()
    bundle = SignedNetwork.from_bytes(out.read_bytes()).verify()
    assert f"network fingerprint {bundle.fingerprint.hex()}" in capsys.readouterr().out
    assert bundle.authority_keys == (running.authority.public_key,)
