"""The caller's profile: init against real authorities, atomic files, passphrases, modes,
the call log's auto-delete, core dumps off."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as st
import pytest
from directory_support import free_ports
from hypothesis import given, settings
from profile_support import PASSPHRASE, make_profile, network_file

from client import _commands as commands
from client.calllog import DAY_S, CallDirection, CallRecord, CallResult
from client.card import Card
from client.cli import build_parser, main
from client.enrol import EnrolError, fetch_topology, load_network
from client.identity import Identity
from client.profile import (
    CALLS_FILE,
    CONTACTS_FILE,
    CONTROL_SOCKET,
    IDENTITY_FILE,
    PROFILE_FILE,
    PassphraseError,
    ProfileError,
    Sealer,
    atomic_write,
    open_profile,
)
from mixnode.config import AuthoritySection, DirAuthConfig, DirectorySection, make_node_config
from mixnode.dirauth import RunningAuthority, init_authority_key, load_authority
from mixnode.directory_client import descriptor_body, descriptor_for, publish_descriptor
from mixnode.keys import NodeKeys
from overlay import SignedNetwork, epoch_at

EPOCH_S = 600
ROOT = Path(__file__).resolve().parents[1]


# -- a small real network: three authorities (threshold 2), two gateways, three mixes ----


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, set[bytes]]]:
    """(network file, an authority's URL, the gateway ids the authorities list)."""
    tmp = tmp_path_factory.mktemp("net")
    ports = free_ports(3)
    urls = tuple(f"http://127.0.0.1:{p}" for p in ports)
    keys = tuple(init_authority_key(tmp / f"auth{i}") for i in range(3))
    directory = DirectorySection(urls, keys, 2, EPOCH_S, 0, 3)
    running = [
        RunningAuthority(
            load_authority(DirAuthConfig(AuthoritySection(
                f"auth{i}", "127.0.0.1", p, tmp / f"auth{i}", 0.2, "voice"), directory)),
            "127.0.0.1", p, 0.2,
        ).start()
        for i, p in enumerate(ports)
    ]  # fmt: skip
    try:
        epoch = epoch_at(time.time(), EPOCH_S)
        gateways = set()
        specs = [("gw0", "gateway", 0), ("gw1", "gateway", 0)]
        specs += [(f"mix{layer}", "mix", layer) for layer in (1, 2, 3)]
        for i, (name, role, layer) in enumerate(specs):
            cfg = make_node_config(
                name=name, role=role, layer=layer, listen_port=41000 + 2 * i,
                client_port=41001 + 2 * i if role == "gateway" else None,
                data_dir=tmp / name, authorities=list(urls), authority_keys=list(keys),
                threshold=2, epoch_length_s=EPOCH_S,
            )  # fmt: skip
            node_keys = NodeKeys.create(cfg.node.data_dir)
            node_keys.rotate(epoch)
            desc = descriptor_for(cfg, node_keys, [epoch, epoch + 1])
            if role == "gateway":
                gateways.add(desc.node_id)
            assert publish_descriptor(list(urls), descriptor_body(desc, node_keys))
        path = tmp / "network.json"
        deadline = time.monotonic() + 15
        while True:  # every signature gathered, and a document listing all five nodes
            raw, bundle = load_network(urls[0])
            try:
                doc = fetch_topology(bundle, time.time())
            except EnrolError:
                doc = None
            signed = len(SignedNetwork.from_bytes(raw).signatures)
            if doc is not None and len(doc.nodes) == 5 and signed == 3:
                break
            assert time.monotonic() < deadline, "the authorities did not converge"
            time.sleep(0.2)
        path.write_bytes(raw)
        yield path, urls[1], gateways
    finally:
        for r in running:
            r.stop()


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("PHANTOM_PASSPHRASE", PASSPHRASE.decode())
    return PASSPHRASE


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_init_picks_a_listed_gateway_and_writes_a_private_profile(
    tmp_path: Path,
    network: tuple[Path, str, set[bytes]],
    passphrase: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, url, gateways = network
    chosen = set()
    for i, source in enumerate((str(path), url, str(path), url)):
        d = tmp_path / f"p{i}"
        assert main(["init", "--network", source, "--dir", str(d), "--name", f"c{i}"]) == 0
        out = capsys.readouterr().out
        assert "network fingerprint" in out and "NOT pinned" in out
        profile = open_profile(d, lambda: passphrase)
        assert profile.gateway_id in gateways
        chosen.add(profile.gateway_id)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert set(_modes(d).values()) == {0o600}
        assert set(_modes(d)) == {"profile.json", "network.json", IDENTITY_FILE, CONTACTS_FILE,
                                  CALLS_FILE}  # fmt: skip
        card = Card.from_text(profile.card().to_text(profile.identity))
        assert card.gateway_id == profile.gateway_id and card.name == f"c{i}"
        assert card.mailbox_id == profile.mailbox_key.mailbox_id
        # Nothing secret in clear: no key bytes appear in any file.
        secrets = (profile.identity.to_bytes().hex(), profile.mailbox_key.seed.hex())
        for f in d.iterdir():
            assert not any(s in f.read_text() for s in secrets), f.name
    assert chosen <= gateways
    fingerprint = open_profile(tmp_path / "p0", lambda: passphrase).network.fingerprint.hex()
    d = tmp_path / "pinned"
    assert main(["init", "--network", url, "--dir", str(d), "--network-fingerprint",
                 fingerprint]) == 0  # fmt: skip
    assert "(pinned)" in capsys.readouterr().out
    assert main(["init", "--network", url, "--dir", str(tmp_path / "x"),
                 "--network-fingerprint", "ab" * 32]) == 2  # fmt: skip
    assert "not the expected" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_second_init_refuses_without_force(
    tmp_path: Path,
    network: tuple[Path, str, set[bytes]],
    passphrase: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, _, _ = network
    d = ["--dir", str(tmp_path / "p"), "--network", str(path)]
    assert main(["init", *d]) == 0
    assert "replaced" not in capsys.readouterr().err  # a first init replaced nothing
    before = _digests(tmp_path / "p")
    first = open_profile(tmp_path / "p", lambda: passphrase).identity.public
    assert main(["init", *d]) == 2
    assert "already holds a profile; --force replaces it" in capsys.readouterr().err
    assert _digests(tmp_path / "p") == before
    assert main(["init", *d, "--force"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "replaced the profile that was here: a new identity, and no contacts, calls or" in err
    assert open_profile(tmp_path / "p", lambda: passphrase).identity.public != first
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    assert main(["init", "--dir", str(tmp_path / "home"), "--network", str(path)]) == 2
    assert "holds other files (notes.txt): give a new or empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["notes.txt"]


def test_init_force_waits_for_the_profile_lock_and_refuses_a_running_listener(
    tmp_path: Path,
    network: tuple[Path, str, set[bytes]],
    passphrase: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``init --force`` replaced a profile while another command was using it."""
    path, _, _ = network
    me = tmp_path / "p"
    argv = ["init", "--dir", str(me), "--network", str(path)]
    assert main(argv) == 0
    before = open_profile(me, lambda: passphrase).identity.public
    monkeypatch.setattr(commands, "LOCK_WAIT_S", 0.2)
    held = os.open(me, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # another command is using the profile
        assert main([*argv, "--force"]) == 2
        assert "another phantom-call command" in capsys.readouterr().err
    finally:
        os.close(held)
    assert open_profile(me, lambda: passphrase).identity.public == before  # untouched
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(me / CONTROL_SOCKET))  # a listener answers on the profile
        listener.listen(1)
        assert main([*argv, "--force"]) == 1
        assert f"a listener is running on {me}" in capsys.readouterr().err
    assert open_profile(me, lambda: passphrase).identity.public == before
    assert main([*argv, "--force"]) == 0  # its socket is stale now: replaced
    assert open_profile(me, lambda: passphrase).identity.public != before


def test_ctrl_c_while_a_command_waits_is_one_line_and_exit_130(
    tmp_path: Path, network: tuple[Path, str, set[bytes]], passphrase: bytes
) -> None:
    """Ctrl-C at any prompt or wait (here: for the profile's lock) ends the command with
    ``interrupted`` and the shell's 130, not a KeyboardInterrupt traceback."""
    path, _, _ = network
    me = tmp_path / "p"
    assert main(["init", "--dir", str(me), "--network", str(path)]) == 0
    held = os.open(me, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # another command is using the profile
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PHANTOM_PASSPHRASE": passphrase.decode()}
        proc = subprocess.Popen([sys.executable, "-m", "client.cli", "contact", "list", "--dir",
                                 str(me)], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.5)  # past the start-up: waiting for the lock
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        os.close(held)
    assert (proc.returncode, err) == (130, "phantom-call: error: interrupted\n")


def test_init_writes_nothing_when_no_authority_answers(
    tmp_path: Path, passphrase: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "net.json").write_bytes(network_file())  # authorities where nothing listens
    d = tmp_path / "p"
    assert main(["init", "--network", str(tmp_path / "net.json"), "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert "no verifiable topology document" in err and "Connection refused" in err
    assert not d.exists()
    for bad, wanted in (
        (["--network", str(tmp_path / "missing.json")], "--network: "),
        (["--network", str(tmp_path / "net.json"), "--name", " x"], "--name: "),
        (["--network", "x", "--no-passphrase", "--passphrase-file", "f"], "one or the other"),
        (["--network", "x", "--passphrase-file", str(tmp_path / "nope")], "--passphrase-file: "),
    ):
        assert main(["init", "--dir", str(d), *bad]) == 2
        assert wanted in capsys.readouterr().err
    assert not d.exists()


def test_no_passphrase_warns_and_stores_plain(
    tmp_path: Path, network: tuple[Path, str, set[bytes]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("PHANTOM_PASSPHRASE", raising=False)
    d = tmp_path / "p"
    assert main(["init", "--network", str(network[0]), "--dir", str(d), "--no-passphrase"]) == 0
    assert "WARNING: --no-passphrase" in capsys.readouterr().err
    assert json.loads((d / CONTACTS_FILE).read_text())["format"] == "phantom-plain"
    assert main(["card", "--dir", str(d)]) == 0  # asks for no passphrase
    # Without --no-passphrase and with no way to ask, init says what is wanted.
    assert main(["init", "--network", str(network[0]), "--dir", str(tmp_path / "q")]) == 2
    assert "no passphrase: give --passphrase-file FILE" in capsys.readouterr().err


def test_a_wrong_passphrase_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = network_file()
    me = make_profile(tmp_path / "me", net)
    bob = make_profile(tmp_path / "bob", net)
    bob_card = bob.card().to_text(bob.identity)
    book = me.load_contacts()
    book.add("bob", Card.from_text(bob_card).to_bytes(bob.identity))
    me.save_contacts(book)
    before = _digests(me.directory)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    d = ["--dir", str(me.directory), "--passphrase-file", str(wrong)]
    for argv in (["contact", "add", "eve", bob_card], ["contact", "remove", "bob"],
                 ["contact", "verify", "bob", "--confirm"], ["card"], ["calls"]):  # fmt: skip
        assert main([*argv, *d]) == 4
        err = capsys.readouterr().err
        assert "wrong passphrase" in err and "nothing was changed" in err
    assert _digests(me.directory) == before
    with pytest.raises(PassphraseError):
        open_profile(me.directory, lambda: b"nope")
    right = tmp_path / "right"
    right.write_bytes(PASSPHRASE + b"\n")
    assert main(["contact", "list", "--dir", str(me.directory), "--passphrase-file",
                 str(right)]) == 0  # fmt: skip
    assert "bob: unverified" in capsys.readouterr().out


def test_a_plain_file_is_not_taken_for_a_sealed_one(tmp_path: Path) -> None:
    me = make_profile(tmp_path / "me", network_file())
    plain = make_profile(tmp_path / "plain", network_file(), passphrase=None)
    (me.directory / CONTACTS_FILE).write_bytes((plain.directory / CONTACTS_FILE).read_bytes())
    with pytest.raises(ProfileError, match="expected a phantom-sealed file"):
        open_profile(me.directory, lambda: PASSPHRASE).load_contacts()
    (me.directory / CONTACTS_FILE).write_bytes((me.directory / CALLS_FILE).read_bytes())
    with pytest.raises(ProfileError, match="holds 'calls', expected 'contacts'"):
        open_profile(me.directory, lambda: PASSPHRASE).load_contacts()


def test_the_sealed_header_records_the_kdf(tmp_path: Path) -> None:
    me = make_profile(tmp_path / "me", network_file())
    header = json.loads((me.directory / CONTACTS_FILE).read_text())
    assert header["format"] == "phantom-sealed" and header["kind"] == "contacts"
    assert header["kdf"]["name"] == "argon2id13"
    assert header["kdf"]["opslimit"] >= 2 and header["kdf"]["memlimit"] >= 64 * 1024 * 1024
    assert len(bytes.fromhex(header["kdf"]["salt"])) == 16


# -- atomic files ------------------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
from client.profile import atomic_write
path, size = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
i = 0
while True:
    i = (i + 1) % 256
    atomic_write(path, bytes([i]) * size)
"""


def test_a_writer_killed_at_any_moment_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    size = 1 << 20
    atomic_write(path, bytes([0]) * size)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.01, 0.05, 0.13, 0.2, 0.31, 0.5):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(size)],
                                  stdout=subprocess.PIPE, env=env)  # fmt: skip
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        data = path.read_bytes()
        assert len(data) == size and data == bytes([data[0]]) * size  # old or new, never torn
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for tmp in tmp_path.glob(".contacts.json.*.tmp"):  # a killed writer's leftover
            tmp.unlink()


def test_a_failure_before_the_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "calls.json"
    atomic_write(path, b"old")

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "calls.json"
    ]


# -- the call log --------------------------------------------------------------------------


def test_the_call_log_keeps_five_fields_and_auto_deletes_per_contact(tmp_path: Path) -> None:
    net = network_file()
    me = make_profile(tmp_path / "me", net)
    ada, bob = make_profile(tmp_path / "ada", net), make_profile(tmp_path / "bob", net)
    book = me.load_contacts()
    book.add("ada", ada.card().to_bytes(ada.identity), auto_delete_days=7)
    book.add("bob", bob.card().to_bytes(bob.identity))
    me.save_contacts(book)
    now = 1_800_000_000
    for who, age_days in (("ada", 10), ("ada", 1), ("bob", 400)):
        rec = CallRecord(now - age_days * DAY_S, 30, CallDirection.OUTGOING,
                         CallResult.ANSWERED, who)  # fmt: skip
        me.append_call(rec, now=now - age_days * DAY_S)
    log = open_profile(me.directory, lambda: PASSPHRASE).open_call_log(now)
    assert [(r.contact, (now - r.time_s) // DAY_S) for r in log.records()] == [
        ("ada", 1), ("bob", 400)
    ]  # fmt: skip
    # Applied on open and written back: the expired record is gone from the file too.
    again = open_profile(me.directory, lambda: PASSPHRASE)
    stored = again.sealer.open("calls", me.directory / CALLS_FILE)
    assert isinstance(stored, list) and len(stored) == 2
    assert set(stored[0]) == {"time_s", "duration_s", "direction", "result", "contact"}


# -- the process -----------------------------------------------------------------------------

_CHECK_DUMPS = """
import resource, sys, ctypes, ctypes.util
from client.cli import build_parser, main
code = main(sys.argv[1:])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
print(code, resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))
"""


def test_the_callers_commands_turn_core_dumps_off(tmp_path: Path) -> None:
    make_profile(tmp_path / "me", network_file(), passphrase=None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHECK_DUMPS, "card", "--dir", str(tmp_path / "me")],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines()[-1] == "0 (0, 0) 0"  # exit 0, RLIMIT_CORE 0, not dumpable


def test_profile_files_refuse_a_missing_profile(tmp_path: Path, passphrase: bytes) -> None:
    assert main(["card", "--dir", str(tmp_path / "none")]) == 2
    with pytest.raises(ProfileError, match="no profile here"):
        open_profile(tmp_path, lambda: passphrase)
    me = make_profile(tmp_path / "me", network_file())
    (me.directory / PROFILE_FILE).write_text("[]")
    with pytest.raises(ProfileError, match="expected a JSON object"):
        open_profile(me.directory, lambda: passphrase)


def test_help_shows_every_default_of_the_callers_commands() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [commands.choices[n] for n in ("init", "card", "calls")]
    contact = commands.choices["contact"]
    verbs = next(a for a in contact._actions if isinstance(a, argparse._SubParsersAction))
    parsers += list(verbs.choices.values())
    for sub in parsers:
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, (sub.prog, action.dest)
        assert "--dir" in text and "PHANTOM_PASSPHRASE" in text


def test_a_profile_keeps_one_salt_so_a_command_derives_once(tmp_path: Path) -> None:
    me = make_profile(tmp_path / "me", network_file())
    again = open_profile(me.directory, lambda: PASSPHRASE)
    again.save_contacts(again.load_contacts())
    again.save_call_log(again.open_call_log(0))
    salts = {json.loads((me.directory / f).read_text())["kdf"]["salt"]
             for f in (IDENTITY_FILE, CONTACTS_FILE, CALLS_FILE)}  # fmt: skip
    assert len(salts) == 1 and len(again.sealer._keys) == 1


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=4, max_size=64))
def test_no_repr_shows_the_passphrase(secret: bytes) -> None:
    sealer = Sealer(secret)
    shown = repr(sealer) + str(sealer)
    assert repr(secret) not in shown and secret.hex() not in shown


def test_a_missing_store_file_does_not_advise_a_new_identity_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], passphrase: bytes
) -> None:
    me = make_profile(tmp_path / "me", network_file())
    (me.directory / CONTACTS_FILE).unlink()
    assert main(["contact", "list", "--dir", str(me.directory)]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "backup" in err and "new identity" in err
    assert "Traceback" not in err


def test_an_empty_call_log_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], passphrase: bytes
) -> None:
    me = make_profile(tmp_path / "me", network_file())
    assert main(["calls", "--dir", str(me.directory)]) == 0
    assert capsys.readouterr().out.strip() == "no calls in the log"
    # Not a contact, no calls: a typo, said so (it was "no calls", exit 0).
    assert main(["calls", "--dir", str(me.directory), "--contact", "ada"]) == 2
    assert "no contact called 'ada'" in capsys.readouterr().err


def test_a_file_planted_at_the_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    me = make_profile(tmp_path / "me", network_file(), passphrase=None)
    victim = tmp_path / "victim"
    for plant in (os.link, os.symlink):
        victim.write_bytes(b"precious")
        tmp = me.directory / f".{CONTACTS_FILE}.{os.getpid()}.tmp"
        plant(victim, tmp)
        me.save_contacts(me.load_contacts())
        assert victim.read_bytes() == b"precious"
        assert not tmp.exists() and not tmp.is_symlink()
        assert stat.S_IMODE((me.directory / CONTACTS_FILE).stat().st_mode) == 0o600


def test_a_reader_that_goes_away_stops_a_command_without_a_traceback(tmp_path: Path) -> None:
    me = make_profile(tmp_path / "me", network_file(), passphrase=None)
    book = me.load_contacts()
    for i in range(300):  # output well over a pipe's buffer
        other = Identity.generate()
        card = Card.make(other, gateway_id=bytes(16), mailbox_id=bytes(16),
                         network_fingerprint=me.network.fingerprint)  # fmt: skip
        book.add(f"c{i:03d}-{'x' * 50}", card.to_bytes(other))
    me.save_contacts(book)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    try:
        out = subprocess.run(
            [sys.executable, "-m", "client.cli", "contact", "list", "--dir", str(me.directory)],
            stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == ""


def test_a_passphrase_of_any_bytes_opens_the_same_from_the_environment_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = b"\xff\xfe not UTF-8"
    me = make_profile(tmp_path / "me", network_file(), passphrase=secret)
    monkeypatch.setenv("PHANTOM_PASSPHRASE", os.fsdecode(secret))
    assert main(["contact", "list", "--dir", str(me.directory)]) == 0
    monkeypatch.delenv("PHANTOM_PASSPHRASE")
    (tmp_path / "pf").write_bytes(secret + b"\n")
    d = ["--dir", str(me.directory), "--passphrase-file", str(tmp_path / "pf")]
    assert main(["contact", "list", *d]) == 0
    assert capsys.readouterr().out.count("no contacts") == 2


@pytest.mark.parametrize("argv", [["card"], ["contact", "list"], ["calls"],
                                  ["init", "--network", "n.json", "--no-passphrase"]])  # fmt: skip
def test_a_directory_the_system_refuses_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([*argv, "--dir", str(tmp_path / ("x" * 300))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phantom-call: error: ") and "File name too long" in err
