"""Enrolment without restarts, leaving, and the absence rule.

``phantom-dirauth allow|deny`` takes effect on SIGHUP (sent by the command itself when the
authority runs); ``phantom-mixnode leave`` posts a signed withdrawal that every authority
honours for the next document; a node silent for two epochs is absent. The last test runs
it all with real processes on loopback: authorities, two nodes set up with ``init``
defaults, ``allow`` on the running authorities, a node that leaves and one that stops.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from directory_support import free_ports, make_node
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from mixnode._process import child_env
from mixnode.cli import main as node_main
from mixnode.config import (
    AuthoritySection,
    DirAuthConfig,
    DirectorySection,
    load_node_config,
    write_config,
)
from mixnode.dirauth import (
    ENROLMENT_FILE,
    PID_FILE,
    Authority,
    AuthorityEvent,
    init_authority_key,
    load_authority,
    read_enrolment,
)
from mixnode.dirauth import main as dirauth_main
from mixnode.keys import NodeKeys
from overlay import (
    DirectoryError,
    NodeDescriptor,
    NodeRole,
    NodeWithdrawal,
    SignedDocument,
    TopologyDocument,
    canonical_json,
    generate_private_key,
    public_key,
    sign_descriptor,
    sign_withdrawal,
)

EPOCH_S = 10  # the shortest epoch a config takes
EPOCH = 1000


def _config(tmp: Path, allowed: tuple[bytes, ...] = ()) -> DirAuthConfig:
    key = init_authority_key(tmp / "auth")
    directory = DirectorySection(
        authorities=("http://127.0.0.1:1",),
        authority_keys=(key,),
        threshold=1,
        epoch_length_s=EPOCH_S,
        genesis_s=0,
        mix_layers=3,
    )
    section = AuthoritySection("a", "127.0.0.1", 1, tmp / "auth", 0.2, "voice", allowed)
    return DirAuthConfig(section, directory)


def _authority(cfg: DirAuthConfig, clock: list[float]) -> Authority:
    return load_authority(cfg, clock=lambda: clock[0], fetch=lambda *a: b"[]")


def _body(desc: NodeDescriptor, seed: bytes) -> bytes:
    sig = sign_descriptor(desc, seed)
    return canonical_json({"descriptor": desc.to_bytes().decode("ascii"), "signature": sig.hex()})


def _withdraw_body(seed: bytes, at: int) -> bytes:
    w = NodeWithdrawal(bytes(SigningKey(seed).verify_key), at)
    sig = sign_withdrawal(w, seed)
    return canonical_json({"withdrawal": w.to_bytes().decode("ascii"), "signature": sig.hex()})


def _listed(auth: Authority, epoch: int) -> set[bytes]:
    auth.build(epoch)
    env = auth.signed(epoch)
    assert env is not None
    return {n.node_id for n in TopologyDocument.from_bytes(env.document).nodes}


# -- allow / deny ----------------------------------------------------------------------


def test_allow_and_deny_take_effect_on_reload_without_a_restart(tmp_path: Path) -> None:
    clock = [EPOCH * EPOCH_S + 1.0]
    a, a_seed = make_node(0, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    b, b_seed = make_node(1, NodeRole.MIX, 2, EPOCH, EPOCH_S)
    cfg = _config(tmp_path)
    # Closed enrolment from the start: some other node is allowed.
    other = bytes(SigningKey.generate().verify_key)
    write_config(tmp_path / "auth.toml", cfg)  # allow/deny read the authority's config
    cmd = ["--config", str(tmp_path / "auth.toml")]
    assert dirauth_main(["allow", other.hex(), *cmd]) == 0
    auth = _authority(cfg, clock)
    with pytest.raises(DirectoryError, match="not enrolled"):
        auth.submit(_body(a, a_seed))
    # allow A: no authority runs under this pid file, so reload as SIGHUP would.
    assert dirauth_main(["allow", a.identity_key.hex(), *cmd]) == 0
    assert auth.reload_enrolment() == (2, 0)
    auth.submit(_body(a, a_seed))
    assert _listed(auth, EPOCH) == {a.node_id}
    # deny A: dropped at once from what the authority holds, so from the next document.
    assert dirauth_main(["deny", a.identity_key.hex(), *cmd]) == 0
    allow, deny = read_enrolment(cfg.authority.data_dir)
    assert (allow, deny) == ({other}, {a.identity_key})
    auth.reload_enrolment()
    assert _listed(auth, EPOCH) == set()
    with pytest.raises(DirectoryError, match="not enrolled"):
        auth.submit(_body(a, a_seed))
    with pytest.raises(DirectoryError, match="not enrolled"):
        auth.submit(_body(b, b_seed))
    assert auth.counters[AuthorityEvent.ENROLMENT_RELOADED] == 2


def test_a_malformed_enrolment_file_keeps_the_lists_in_force(tmp_path: Path) -> None:
    clock = [EPOCH * EPOCH_S + 1.0]
    a, a_seed = make_node(0, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    auth = _authority(_config(tmp_path, allowed=(a.identity_key,)), clock)
    auth.submit(_body(a, a_seed))
    for junk in (b"{", b'{"allow": ["zz"], "deny": []}', b"[" * 100_000, b'{"allow": []}'):
        (tmp_path / "auth" / ENROLMENT_FILE).write_bytes(junk)
        with pytest.raises(Exception, match=ENROLMENT_FILE):
            auth.reload_enrolment()
        assert auth.enrolled(a.identity_key)
    assert _listed(auth, EPOCH) == {a.node_id}


def test_allow_never_signals_a_stale_pid_that_is_not_an_authority(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """SIGHUP ends most programs: a pid file left by a crashed authority whose pid now
    names another process must not make ``allow`` kill it."""
    cfg = _config(tmp_path)
    write_config(tmp_path / "auth.toml", cfg)
    other = _start(["-c", "import time; time.sleep(30)"], tmp_path / "other.log")
    procs.append(other)
    (cfg.authority.data_dir / PID_FILE).write_text(f"{other.pid}\n")
    key = bytes(SigningKey.generate().verify_key).hex()
    assert dirauth_main(["allow", key, "--config", str(tmp_path / "auth.toml")]) == 0
    time.sleep(0.2)
    assert other.poll() is None


def test_key_prints_the_identity_and_leave_refuses_while_the_node_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    init = ["init", "--config", str(tmp_path / "m.toml"), "--role", "mix", "--layer", "1",
            "--name", "m", "--data-dir", "m", "--listen-port", str(port),
            "--authority", "http://127.0.0.1:1", "--authority-key", "11" * 32]  # fmt: skip
    assert node_main(init) == 0
    identity = NodeKeys.load(tmp_path / "m").identity_public.hex()
    assert f"identity key {identity}" in capsys.readouterr().out
    assert node_main(["key", "--config", str(tmp_path / "m.toml")]) == 0
    assert capsys.readouterr().out.strip() == identity
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:  # as a running node does
        held.bind(("127.0.0.1", port))
        assert node_main(["leave", "--config", str(tmp_path / "m.toml")]) == 1
    assert "stop the node first" in capsys.readouterr().err
    # Stopped, but no authority answers: said, and exit 1.
    assert node_main(["leave", "--config", str(tmp_path / "m.toml")]) == 1
    assert "no authority took the withdrawal" in capsys.readouterr().err


# -- withdrawal ----------------------------------------------------------------------


def test_a_withdrawn_node_is_absent_from_the_next_document_until_it_publishes_again(
    tmp_path: Path,
) -> None:
    clock = [EPOCH * EPOCH_S + 5.0]
    a, a_seed = make_node(0, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    b, b_seed = make_node(1, NodeRole.MIX, 2, EPOCH, EPOCH_S)
    auth = _authority(_config(tmp_path), clock)
    for desc, seed in ((a, a_seed), (b, b_seed)):
        auth.submit(_body(desc, seed))
    assert _listed(auth, EPOCH) == {a.node_id, b.node_id}
    # A withdrawal signed by another key is refused and counted.
    with pytest.raises(DirectoryError, match="does not verify"):
        w = NodeWithdrawal(a.identity_key, int(clock[0]))
        bad = sign_withdrawal(NodeWithdrawal(b.identity_key, int(clock[0])), b_seed)
        auth.withdraw(
            canonical_json({"withdrawal": w.to_bytes().decode("ascii"), "signature": bad.hex()})
        )
    assert auth.counters[AuthorityEvent.WITHDRAWAL_REFUSED] == 1
    auth.withdraw(_withdraw_body(a_seed, int(clock[0])))
    assert _listed(auth, EPOCH) == {b.node_id}
    assert _listed(auth, EPOCH + 1) == {b.node_id}
    # The old descriptor (replayed, or pulled from a peer) does not bring it back...
    with pytest.raises(DirectoryError, match="withdrawn"):
        auth.submit(_body(a, a_seed))
    # ...and a peer learns the withdrawal in its round and drops the node too.
    peer_cfg = _config(tmp_path / "peer")
    peer = _authority(peer_cfg, clock)
    peer.submit(_body(a, a_seed))
    assert peer.merge_peer_withdrawals(auth.withdrawals_payload()) == 1
    assert _listed(peer, EPOCH) == set()
    # The node started again: a newer descriptor is listed as usual.
    again = dataclasses.replace(a, published_at=int(clock[0]) + 1)
    auth.submit(_body(again, a_seed))
    assert _listed(auth, EPOCH) == {a.node_id, b.node_id}
    # A restarted authority keeps the withdrawal.
    assert _authority(peer_cfg, clock).merge_peer_descriptors(auth.descriptors_payload()) == 2


def test_identity_rotation_as_documented_leaves_no_ghost(tmp_path: Path) -> None:
    """Regression: rotating the identity left the old node listed beside the new one
    until its keys ran out. The guide now says: stop, ``leave``, new identity, start."""
    clock = [EPOCH * EPOCH_S + 5.0]
    old, old_seed = make_node(0, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    new, new_seed = make_node(1, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    new = dataclasses.replace(new, port=old.port, name=old.name, published_at=int(clock[0]))
    auth = _authority(_config(tmp_path), clock)
    auth.submit(_body(old, old_seed))
    auth.withdraw(_withdraw_body(old_seed, int(clock[0])))
    auth.submit(_body(new, new_seed))
    assert _listed(auth, EPOCH) == _listed(auth, EPOCH + 1) == {new.node_id}


def test_a_withdrawal_of_a_node_not_enrolled_is_refused(tmp_path: Path) -> None:
    """Closed enrolment: strangers cannot fill the withdrawal table."""
    a, _ = make_node(0, NodeRole.MIX, 1, EPOCH, EPOCH_S)
    auth = _authority(_config(tmp_path, allowed=(a.identity_key,)), [EPOCH * EPOCH_S + 5.0])
    with pytest.raises(DirectoryError, match="not enrolled"):
        auth.withdraw(_withdraw_body(os.urandom(32), EPOCH * EPOCH_S))
    assert auth.withdrawals_payload() == b"[]"


def test_any_malformed_withdrawal_is_refused_with_a_directory_error(tmp_path: Path) -> None:
    auth = _authority(_config(tmp_path), [EPOCH * EPOCH_S + 5.0])
    good = _withdraw_body(os.urandom(32), EPOCH * EPOCH_S)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, len(good) - 1), st.binary(min_size=1, max_size=3))
    def mutate(i: int, b: bytes) -> None:
        data = good[:i] + b + good[i + 1 :]
        try:
            auth.withdraw(data)
        except DirectoryError:
            pass

    mutate()
    assert auth.counters[AuthorityEvent.WITHDRAWAL_REFUSED] > 0


# -- absence ---------------------------------------------------------------------------


def _far_ahead(i: int, published_epoch: int) -> tuple[NodeDescriptor, bytes]:
    """A node that published keys for eight epochs at once, then went silent."""
    desc, seed = make_node(i, NodeRole.MIX, 1, published_epoch, EPOCH_S)
    epochs = range(published_epoch, published_epoch + 8)
    keys = {e: public_key(generate_private_key()) for e in epochs}
    return dataclasses.replace(desc, epoch_keys=keys), seed


def test_a_node_silent_for_two_epochs_is_absent_even_with_keys_ahead(tmp_path: Path) -> None:
    """Regression: a stopped node stayed listed for as long as its published keys lasted."""
    clock = [EPOCH * EPOCH_S + 1.0]
    a, a_seed = _far_ahead(0, EPOCH)
    auth = _authority(_config(tmp_path), clock)
    auth.submit(_body(a, a_seed))
    assert _listed(auth, EPOCH) == {a.node_id}
    clock[0] += EPOCH_S
    auth.expire()
    assert _listed(auth, EPOCH + 1) == {a.node_id}  # one epoch without a word: still listed
    clock[0] += EPOCH_S
    auth.sync_round()
    assert _listed(auth, EPOCH + 2) == set()  # two: absent
    assert not (tmp_path / "auth" / "descriptors" / f"{a.node_id.hex()}.json").exists()


@settings(max_examples=60, deadline=None)
@given(published=st.integers(0, 4 * EPOCH_S), now=st.integers(0, 4 * EPOCH_S))
def test_listed_exactly_when_published_since_the_previous_epoch_began(
    tmp_path_factory: pytest.TempPathFactory, published: int, now: int
) -> None:
    """Property: with keys for every epoch, a descriptor published at ``t`` is in the
    document of the clock's epoch E iff t >= start(E - 1); one never listed is refused."""
    tmp = tmp_path_factory.mktemp("absence")
    base = EPOCH * EPOCH_S
    clock = [float(base + 2 * EPOCH_S + now)]
    a, a_seed = _far_ahead(0, EPOCH)
    a = dataclasses.replace(a, published_at=base + published)
    auth = _authority(_config(tmp), clock)
    epoch = int(clock[0]) // EPOCH_S
    expected = base + published >= (epoch - 1) * EPOCH_S and epoch < EPOCH + 8
    try:
        auth.submit(_body(a, a_seed))
    except DirectoryError:
        assert not expected
        return
    assert (a.node_id in _listed(auth, epoch)) == expected


# -- real processes ----------------------------------------------------------------------


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers share the node's process group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _document(url: str) -> set[str]:
    try:
        with urllib.request.urlopen(f"{url}/v1/topology/current", timeout=3) as resp:
            env = SignedDocument.from_bytes(resp.read())
    except OSError:
        return set()
    return {n.name for n in TopologyDocument.from_bytes(env.document).nodes}


def _wait_for(what: str, cond: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            _stop(p)


def test_running_authorities_enrol_a_node_and_see_nodes_leave_and_stop(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Two authorities (threshold 2) as processes, enrolment closed; two nodes set up
    with ``init`` defaults on this host run together; ``allow`` lists a node without a
    restart; ``leave`` drops one from the next document; a stopped node leaves too."""
    ports = free_ports(2)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    pubs = [init_authority_key(tmp_path / f"a{i}").hex() for i in range(2)]  # init keeps them
    to_all = [x for u in urls for x in ("--authority", u)]
    closed = bytes(SigningKey.generate().verify_key).hex()  # enrolment is closed
    for i in range(2):
        cfg = str(tmp_path / f"a{i}.toml")
        init = ["init", "--config", cfg, "--name", f"a{i}", "--listen-port", str(ports[i]),
                "--data-dir", f"a{i}", "--epoch-length-s", str(EPOCH_S), "--round-interval-s",
                "0.5", "--threshold", "2", "--authority-key", pubs[1 - i], *to_all]  # fmt: skip
        assert dirauth_main(init) == 0
        assert dirauth_main(["allow", closed, "--config", cfg]) == 0
        run = ["-m", "mixnode.dirauth", "run", "--config", cfg]
        procs.append(_start(run, tmp_path / f"a{i}.log"))
    # The network file, once both authorities signed it; the nodes join with it.
    net = ["network", "--config", str(tmp_path / "a0.toml"), "--out", str(tmp_path / "net.json")]
    _wait_for("network file", lambda: _cli("mixnode.dirauth", *net).returncode == 0, 30)
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    for name, layer in (("m1", "1"), ("m2", "2")):
        r = _cli("mixnode.cli", "init", "--config", str(nodes / f"{name}.toml"), "--role", "mix",
                 "--layer", layer, "--name", name, "--data-dir", name, "--workers", "1",
                 "--network", str(tmp_path / "net.json"))  # fmt: skip
        assert r.returncode == 0, r.stderr
    cfgs = {n: load_node_config(nodes / f"{n}.toml") for n in ("m1", "m2")}
    used = [(c.node.listen_port, c.metrics.port) for c in cfgs.values()]
    assert len({p for pair in used for p in pair}) == 4  # no port shared
    for name in cfgs:
        run = ["-m", "mixnode.cli", "run", "--config", str(nodes / f"{name}.toml")]
        procs.append(_start(run, nodes / f"{name}.log"))
    # Both run; neither is listed while enrolment is closed to them.
    for name, c in cfgs.items():
        _wait_for(f"{name} serves metrics", lambda c=c: _metrics_up(c.metrics.port), 30)
    assert all(p.poll() is None for p in procs)
    time.sleep(2)
    assert _document(urls[0]) == set()
    # allow m1 on the running authorities: listed in the next document, no restart.
    m1_key = _cli("mixnode.cli", "key", "--config", str(nodes / "m1.toml")).stdout.strip()
    for i in range(2):
        r = _cli("mixnode.dirauth", "allow", m1_key, "--config", str(tmp_path / f"a{i}.toml"))
        assert r.returncode == 0 and "reloads now" in r.stdout, r.stdout + r.stderr
    _wait_for("m1 listed", lambda: all(_document(u) == {"m1"} for u in urls), 3 * EPOCH_S)
    m2_key = _cli("mixnode.cli", "key", "--config", str(nodes / "m2.toml")).stdout.strip()
    for i in range(2):
        _cli("mixnode.dirauth", "allow", m2_key, "--config", str(tmp_path / f"a{i}.toml"))
    _wait_for("m2 listed", lambda: _document(urls[0]) == {"m1", "m2"}, 3 * EPOCH_S)
    # m1 stops and leaves: gone from the next document, long before its keys run out.
    _stop(procs[2])
    r = _cli("mixnode.cli", "leave", "--config", str(nodes / "m1.toml"))
    assert r.returncode == 0 and "withdrawn from 2 of 2" in r.stdout, r.stdout + r.stderr
    _wait_for("m1 withdrawn", lambda: all(_document(u) == {"m2"} for u in urls), 5)
    # m2 just stops: absent within two epochs or so.
    _stop(procs[3])
    _wait_for("m2 absent", lambda: _document(urls[0]) == set(), 3 * EPOCH_S + 5)


def _metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
