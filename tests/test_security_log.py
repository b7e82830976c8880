"""The security log kept in the profile: refused downgrades and mode changes, sealed, per
contact, shown by ``phantom-call security-log`` (client/_signaling/seclog.py, seed 3.3, 4.5).
The refusal itself is tested in tests/test_hybrid.py; here: the record's stored form, the
profile's file, and a listener (``Phone``) that refuses a downgraded offer from a contact
and stores it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from profile_support import network_file
from test_gateway_link import _epochs_of_nodes, _serving

from client import IdentityChannel, PrivacyMode, SecurityEvent, SecurityRecord, VoiceProfile
from client._frames import Address, SignalFramer
from client._signaling import MAX_SECURITY_RECORDS, MediaType, Offer, call_id_for, encode
from client.cli import main
from client.gateway_link import open_gateway_link
from client.phone import SIGNAL_KEY_PERSON, Phone
from client.profile import (
    CHANNELS_FILE,
    SECURITY_FILE,
    Profile,
    ProfileError,
    Sealer,
    create_profile,
)
from overlay import VOICE, UsageError, build_document

records = st.builds(
    SecurityRecord,
    st.none() | st.floats(0, 4e9),
    st.sampled_from(list(SecurityEvent)),
    st.sampled_from(list(PrivacyMode)),
    st.sampled_from(list(PrivacyMode)),
    st.booleans(),
)


@given(records)
def test_a_record_round_trips_through_its_stored_form(record: SecurityRecord) -> None:
    assert SecurityRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@given(st.dictionaries(st.sampled_from(["at", "event", "from", "to", "approved", "x"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                       ) | st.lists(st.integers()) | st.text())  # fmt: skip
def test_anything_else_is_a_usage_error(d: Any) -> None:
    try:
        SecurityRecord.from_dict(d)
    except UsageError:
        pass


def _profile(tmp_path: Path, name: str, passphrase: bytes | None = None) -> Profile:
    return create_profile(tmp_path / name, network_file(), bytes(16), passphrase, name=name)


def test_the_profile_keeps_events_sealed_in_order_and_bounded(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "me", b"a passphrase for the test")
    assert profile.load_security_events() == []
    event = SecurityRecord(1.0, SecurityEvent.DOWNGRADE_REFUSED, PrivacyMode.PARANOID,
                           PrivacyMode.PARANOID, False)  # fmt: skip
    profile.append_security_events([("bob", event)])
    profile.append_security_events([("carol", event)] * MAX_SECURITY_RECORDS)
    stored = profile.load_security_events()
    assert len(stored) == MAX_SECURITY_RECORDS and stored[-1] == ("carol", event)
    raw = (profile.directory / SECURITY_FILE).read_text()
    assert "downgrade" not in raw and "carol" not in raw  # sealed, as the call log
    assert (profile.directory / SECURITY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_malformed_stored_log_is_a_profile_error(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "me")
    path = profile.directory / SECURITY_FILE
    path.write_bytes(Sealer(None).seal("security", [{"contact": "bob", "event": "x"}]))
    with pytest.raises(ProfileError, match="security.json: malformed: event"):
        profile.load_security_events()


async def test_a_listener_stores_the_downgraded_offer_it_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, secrets = _epochs_of_nodes((7,))
    doc = build_document(7, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
    gateway = doc.gateways[0]
    me = create_profile(tmp_path / "me", network_file(), gateway.node_id, None, name="me")
    peer = create_profile(tmp_path / "bob", network_file(), gateway.node_id, None, name="bob")
    book = me.load_contacts()
    book.add("bob", peer.card().to_bytes(peer.identity))
    me.save_contacts(book)
    # bob's side of the conversation, as a client without the hybrid keys would send it
    mine, theirs = me.identity.public.to_bytes(), peer.identity.public.to_bytes()
    channel = IdentityChannel(peer.identity.to_bytes()[32:], theirs, mine)
    nonce = b"n" * 16
    offer = Offer(call_id_for(channel.conversation_id, nonce), nonce, PrivacyMode.PARANOID,
                  MediaType.AUDIO, 1, VoiceProfile(), b"mb", b"")  # fmt: skip
    envelope = channel.seal(encode(offer))[0]
    key = hashlib.blake2b(peer.identity.dh(me.identity.public), key=channel.conversation_id,
                          digest_size=32, person=SIGNAL_KEY_PERSON).digest()  # fmt: skip
    me_at = Address(gateway.node_id, me.mailbox_key.mailbox_id)
    bob_at = Address(gateway.node_id, peer.mailbox_key.mailbox_id)
    frames = SignalFramer(key, bob_at, me_at).frames(envelope)
    async with _serving(secrets[7]) as edge:
        async with open_gateway_link(VOICE, edge.sock.getsockname(), gateway.epoch_key(7),
                                     me.mailbox_key, silence_s=5.0) as link:  # fmt: skip
            phone = Phone(me, doc, link, wall_clock=time.time)
            async with trio.open_nursery() as nursery:
                await nursery.start(phone.run)
                for frame in frames:
                    phone._idle_delivery(frame, trio.current_time())  # noqa: SLF001
                with trio.fail_after(10):
                    while not (me.directory / SECURITY_FILE).exists():
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    assert phone.current is None and phone.counters["stray_signal"] == 1  # never rang
    [(contact, record)] = me.load_security_events()
    assert contact == "bob" and record.event is SecurityEvent.DOWNGRADE_REFUSED
    assert record.approved is False and record.at is not None and record.at > 1.7e9
    capsys.readouterr()
    assert main(["security-log", "--dir", str(me.directory)]) == 0
    shown = capsys.readouterr().out
    assert "downgrade_refused" in shown and "PARANOID -> PARANOID  refused" in shown
    assert shown.rstrip().endswith("bob")


def test_a_forced_init_leaves_no_state_of_the_old_identity(tmp_path: Path) -> None:
    """init --force with another passphrase: the old channel states (chain keys of the old
    identity) and security log are gone, not left sealed under the old passphrase, where
    the new profile could not open them (every listener start failed on them)."""
    old = _profile(tmp_path, "me", b"the old passphrase")
    old.save_channel_states({bytes(16): b"chain keys of the old identity"})
    event = SecurityRecord(1.0, SecurityEvent.MODE_CHANGED, PrivacyMode.PARANOID,
                           PrivacyMode.PARANOID, True)  # fmt: skip
    old.append_security_events([("bob", event)])
    new = create_profile(old.directory, network_file(), bytes(16), b"a new passphrase",
                         name="me", force=True)  # fmt: skip
    assert new.load_channel_states() == {} and new.load_security_events() == []
    assert not (new.directory / CHANNELS_FILE).exists()
