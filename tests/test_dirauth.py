"""Directory authorities on loopback: descriptors in, threshold-signed documents out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from directory_support import free_ports

from mixnode.config import (
    AuthoritySection,
    DirAuthConfig,
    DirectorySection,
    NodeConfig,
    load_dirauth_config,
    make_node_config,
    write_config,
)
from mixnode.daemon import Node
from mixnode.dirauth import Authority, RunningAuthority, init_authority_key, load_authority
from mixnode.dirauth import main as dirauth_main
from mixnode.directory_client import (
    DirectoryClient,
    descriptor_body,
    descriptor_for,
    publish_descriptor,
)
from mixnode.keys import NodeKeys
from overlay import VOICE, DirectoryError, TopologyDocument, epoch_at, select_path

EPOCH_S = 600


def _auth_configs(tmp: Path, n: int, threshold: int) -> list[DirAuthConfig]:
    ports = free_ports(n)
    keys = [init_authority_key(tmp / f"auth{i}") for i in range(n)]
    directory = DirectorySection(
        authorities=tuple(f"http://127.0.0.1:{p}" for p in ports),
        authority_keys=tuple(keys),
        threshold=threshold,
        epoch_length_s=EPOCH_S,
        genesis_s=0,
        mix_layers=3,
    )
    return [
        DirAuthConfig(
            AuthoritySection(f"auth{i}", "127.0.0.1", ports[i], tmp / f"auth{i}", 0.2, "voice"),
            directory,
        )
        for i in range(n)
    ]


def _nodes(tmp: Path, cfg: DirAuthConfig) -> list[tuple[object, NodeKeys]]:
    out = []
    specs = [("gw0", "gateway", 0), ("gw1", "gateway", 0)]
    specs += [(f"mix{layer}{i}", "mix", layer) for layer in (1, 2, 3) for i in range(2)]
    ports = iter(range(40000, 40100))
    for name, role, layer in specs:
        ncfg = make_node_config(
            name=name,
            role=role,
            layer=layer,
            listen_port=next(ports),
            client_port=next(ports) if role == "gateway" else None,
            data_dir=tmp / name,
            authorities=list(cfg.directory.authorities),
            authority_keys=list(cfg.directory.authority_keys),
            threshold=cfg.directory.threshold,
            epoch_length_s=EPOCH_S,
        )
        out.append((ncfg, NodeKeys.create(ncfg.node.data_dir)))
    return out


@pytest.fixture
def three_authorities(
    tmp_path: Path,
) -> Iterator[tuple[list[DirAuthConfig], list[RunningAuthority]]]:
    cfgs = _auth_configs(tmp_path, 3, threshold=2)
    running = [
        RunningAuthority(load_authority(c), "127.0.0.1", c.authority.listen_port, 0.2).start()
        for c in cfgs
    ]
    yield cfgs, running
    for r in running:
        r.stop()


def _poll(client: DirectoryClient, want_nodes: int, want_sigs: int) -> TopologyDocument:
    deadline = time.monotonic() + 10
    while True:
        try:
            r = client.fetch_result()
            if len(r.document.nodes) == want_nodes and r.signatures >= want_sigs:
                return r.document
        except DirectoryError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("authorities did not converge")
        time.sleep(0.1)


def test_three_authorities_converge_and_client_verifies(
    tmp_path: Path, three_authorities: tuple[list[DirAuthConfig], list[RunningAuthority]]
) -> None:
    cfgs, running = three_authorities
    epoch = epoch_at(time.time(), EPOCH_S)
    nodes = _nodes(tmp_path, cfgs[0])
    for i, (ncfg, keys) in enumerate(nodes):
        keys.rotate(epoch)
        body = descriptor_body(descriptor_for(ncfg, keys, [epoch, epoch + 1]), keys)  # type: ignore[arg-type]
        # Each node reaches only one authority: the others learn it from their peers.
        url = cfgs[0].directory.authorities[i % 3]
        assert publish_descriptor([url], body) == [url]
    client = DirectoryClient(
        cfgs[0].directory.authorities,
        cfgs[0].directory.authority_keys,
        3,  # demand all three, to see that they agreed on the same bytes
        geometry=VOICE,
        cache_dir=tmp_path / "client-cache",
    )
    doc = _poll(client, want_nodes=8, want_sigs=3)
    assert doc.epoch == epoch and [len(x) for x in doc.layers] == [2, 2, 2]
    path = select_path(doc, doc.gateways[0].node_id, doc.gateways[1].node_id, 0.01)
    assert [doc.node(h.node_id).layer for h in path] == [0, 1, 2, 3, 0]
    # The next epoch's document is built ahead of time, with the keys nodes published.
    assert client.fetch(epoch + 1).epoch == epoch + 1

    # One authority down: two signatures still meet a threshold of 2.
    running[0].stop()
    client2 = DirectoryClient(
        cfgs[0].directory.authorities, cfgs[0].directory.authority_keys, 2, geometry=VOICE
    )
    assert client2.fetch().to_bytes() == doc.to_bytes()

    # All down: the verified document comes from the cache while it is valid, never after.
    for r in running[1:]:
        r.stop()
    cached = client.fetch_result()
    assert cached.from_cache and cached.document.to_bytes() == doc.to_bytes()
    clock = [doc.valid_until + 1.0]
    late = DirectoryClient(
        cfgs[0].directory.authorities,
        cfgs[0].directory.authority_keys,
        3,
        cache_dir=tmp_path / "client-cache",
        clock=lambda: clock[0],
    )
    # Next epoch: the cached document of that epoch (fetched ahead) takes over.
    assert late.fetch().epoch == epoch + 1
    clock[0] += EPOCH_S
    with pytest.raises(DirectoryError, match="no verifiable topology document"):
        late.fetch()
    running.clear()


def test_authority_refuses_forged_and_oversized_descriptors(
    tmp_path: Path, three_authorities: tuple[list[DirAuthConfig], list[RunningAuthority]]
) -> None:
    cfgs, _ = three_authorities
    url = cfgs[0].directory.authorities[0]
    ncfg, keys = _nodes(tmp_path, cfgs[0])[2]
    epoch = epoch_at(time.time(), EPOCH_S)
    keys.rotate(epoch)
    obj = json.loads(descriptor_body(descriptor_for(ncfg, keys, [epoch]), keys))  # type: ignore[arg-type]
    obj["descriptor"] = obj["descriptor"].replace('"layer":1', '"layer":2')

    def post(body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{url}/v1/descriptor", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    for bad in ("/v1/topology/%C2%B2", "/v1/topology/" + "9" * 30, "/v1/signature/x", "/nope"):
        assert get(bad) in (400, 404)
    assert get("/v1/topology/123") == 404

    code, reply = post(json.dumps(obj).encode())
    assert code == 400 and b"does not verify" in reply
    assert post(b"x" * (65 * 1024))[0] == 413
    assert post(b"\xff\xfe")[0] == 400
    stale = descriptor_body(descriptor_for(ncfg, keys, [epoch]), keys)  # type: ignore[arg-type]
    keys.rotate(epoch + 5)
    future = descriptor_for(ncfg, keys, [epoch + 5])  # type: ignore[arg-type]
    assert post(descriptor_body(future, keys))[0] == 200
    # The older descriptor is accepted as a request but does not replace the newer one.
    assert post(stale)[0] == 200
    held = json.loads(urllib.request.urlopen(f"{url}/v1/descriptors", timeout=5).read())
    assert [json.loads(h["descriptor"])["epoch_keys"].keys() for h in held] == [{str(epoch + 5)}]


def test_authority_state_survives_restart(tmp_path: Path) -> None:
    (cfg,) = _auth_configs(tmp_path, 1, threshold=1)
    clock = [1000.0 * EPOCH_S]
    auth = load_authority(cfg, clock=lambda: clock[0], fetch=lambda *a: b"[]")
    ncfg, keys = _nodes(tmp_path, cfg)[0]
    keys.rotate(1000)
    auth.submit(descriptor_body(descriptor_for(ncfg, keys, [1000, 1001]), keys))  # type: ignore[arg-type]
    auth.sync_round()
    first = auth.signed(1000)
    again = load_authority(cfg, clock=lambda: clock[0], fetch=lambda *a: b"[]")
    assert again.signed(1000) == first
    again.sync_round()
    assert again.signed(1000) == first  # same descriptors: same bytes, same signature
    assert first is not None and len(TopologyDocument.from_bytes(first.document).nodes) == 1
    # Two epochs later the descriptor has expired and the node is gone.
    clock[0] += 2 * EPOCH_S
    again.sync_round()
    doc = again.signed(1002)
    assert doc is not None and TopologyDocument.from_bytes(doc.document).nodes == ()


def test_authority_refuses_to_start_without_its_key_listed(tmp_path: Path) -> None:
    (cfg,) = _auth_configs(tmp_path, 1, threshold=1)
    with pytest.raises(Exception, match="not in directory.authority_keys"):
        Authority(cfg, os.urandom(32))


async def test_node_directory_loop_publishes_and_follows(tmp_path: Path) -> None:
    """The daemon's one directory loop, without workers: it rotates the keys, publishes the
    node at its ports, adopts the document and reports the node listed."""
    (cfg,) = _auth_configs(tmp_path, 1, threshold=1)
    running = RunningAuthority(load_authority(cfg), "127.0.0.1", cfg.authority.listen_port, 0.1)
    running.start()
    try:
        ncfg, keys = _nodes(tmp_path, cfg)[0]
        assert isinstance(ncfg, NodeConfig) and ncfg.gateway is not None
        node = Node(ncfg, keys=keys)
        node.port, node.client_port = ncfg.node.listen_port, ncfg.gateway.client_port  # as bound
        listed = trio.Event()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node._directory_loop, listed)
                await listed.wait()
                nursery.cancel_scope.cancel()
        doc = node.topology
        assert doc is not None and node.listed
        mine = doc.by_id[keys.node_id]
        assert (mine.port, mine.client_port) == (node.port, node.client_port)
        assert keys.epochs() == [epoch_at(time.time(), EPOCH_S) + i for i in (0, 1)]
    finally:
        running.stop()


@pytest.mark.slow
def test_real_authority_processes(tmp_path: Path) -> None:
    """Two `phantom-dirauth run` processes; a client verifies their 2-of-2 document."""
    ports = free_ports(2)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    pubs = []
    for i, port in enumerate(ports):
        args = [
            "init",
            "--config",
            str(tmp_path / f"a{i}.toml"),
            "--name",
            f"a{i}",
            "--listen-port",
            str(port),
            "--data-dir",
            f"a{i}",
            "--round-interval-s",
            "0.2",
            "--epoch-length-s",
            str(EPOCH_S),
        ]
        for u in urls:
            args += ["--authority", u]
        assert dirauth_main(args) == 0
        from mixnode.dirauth import authority_public_key

        pubs.append(authority_public_key(tmp_path / f"a{i}"))
    # Each authority's config must list both keys: rewrite with the full set.
    for i in range(2):
        args = [
            "init",
            "--config",
            str(tmp_path / f"a{i}.toml"),
            "--name",
            f"a{i}",
            "--listen-port",
            str(ports[i]),
            "--data-dir",
            f"a{i}",
            "--round-interval-s",
            "0.2",
            "--epoch-length-s",
            str(EPOCH_S),
            "--threshold",
            "2",
            "--force",
        ]
        for u in urls:
            args += ["--authority", u]
        for k in pubs:
            args += ["--authority-key", k.hex()]
        assert dirauth_main(args) == 0
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixnode.dirauth",
                "run",
                "--config",
                str(tmp_path / f"a{i}.toml"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(2)
    ]
    try:
        client = DirectoryClient(urls, pubs, 2, geometry=VOICE)
        doc = _poll(client, want_nodes=0, want_sigs=2)
        assert doc.epoch == epoch_at(time.time(), EPOCH_S)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            out, err = p.communicate(timeout=10)
            assert p.returncode == 0, err
            assert b"stopped" in out


def test_enrolment_allowlist(tmp_path: Path) -> None:
    (cfg,) = _auth_configs(tmp_path, 1, threshold=1)
    nodes = _nodes(tmp_path, cfg)
    (ok_cfg, ok_keys), (other_cfg, other_keys) = nodes[0], nodes[1]
    a = cfg.authority
    closed = DirAuthConfig(
        AuthoritySection(
            a.name,
            a.listen_host,
            a.listen_port,
            a.data_dir,
            a.round_interval_s,
            a.geometry,
            allowed_nodes=(ok_keys.identity_public,),
        ),
        cfg.directory,
    )
    write_config(tmp_path / "closed.toml", closed)
    auth = load_authority(load_dirauth_config(tmp_path / "closed.toml"), fetch=lambda *a: b"[]")
    epoch = auth.current_epoch()
    for keys in (ok_keys, other_keys):
        keys.rotate(epoch)
    auth.submit(descriptor_body(descriptor_for(ok_cfg, ok_keys, [epoch]), ok_keys))  # type: ignore[arg-type]
    with pytest.raises(DirectoryError, match="not enrolled"):
        auth.submit(descriptor_body(descriptor_for(other_cfg, other_keys, [epoch]), other_keys))  # type: ignore[arg-type]
    # Nor can a peer slip it in.
    peer_list = (
        f"[{descriptor_body(descriptor_for(other_cfg, other_keys, [epoch]), other_keys).decode()}]"  # type: ignore[arg-type]
    )
    assert auth.merge_peer_descriptors(peer_list.encode()) == 0
    auth.sync_round()
    env = auth.signed(epoch)
    assert env is not None
    assert [n.node_id for n in TopologyDocument.from_bytes(env.document).nodes] == [ok_keys.node_id]


def test_a_later_descriptor_replaces_the_earlier_one_for_the_same_epochs(
    tmp_path: Path,
) -> None:
    """A node restarted on a new port within an epoch must be listed at the new port; an
    older descriptor (a replay, or a slow peer authority) never takes it back."""
    import dataclasses

    from overlay import sign_descriptor

    (cfg,) = _auth_configs(tmp_path, 1, threshold=1)
    auth = load_authority(cfg, clock=lambda: 1000.0 * EPOCH_S, fetch=lambda *a: b"[]")
    ncfg, keys = _nodes(tmp_path, cfg)[2]  # a mix
    keys.rotate(1000)
    base = descriptor_for(ncfg, keys, [1000, 1001])  # type: ignore[arg-type]

    def body(port: int, at: int) -> bytes:
        d = dataclasses.replace(base, port=port, published_at=at)
        sig = sign_descriptor(d, keys.identity_seed)
        obj = {"descriptor": d.to_bytes().decode("ascii"), "signature": sig.hex()}
        return json.dumps(obj).encode()

    # The later port sorts lower as bytes: only the publication time can make it win.
    t0 = 1000 * EPOCH_S  # published within the current epoch (older ones count as absent)
    assert auth.submit(body(50001, t0 + 100)).port == 50001
    assert auth.submit(body(40001, t0 + 200)).port == 40001
    assert auth.submit(body(50001, t0 + 100)).port == 40001  # the older one is ignored
    auth.sync_round()
    signed = auth.signed(1000)
    assert signed is not None
    (node,) = TopologyDocument.from_bytes(signed.document).nodes
    assert node.port == 40001 and node.published_at == t0 + 200
