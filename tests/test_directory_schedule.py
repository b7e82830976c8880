"""The node's directory decisions (overlay.DirectorySchedule), on made-up time: when it
publishes, when it fetches, which document it adopts, how long it waits; and the one rule
(overlay.descriptor_rank) by which authorities and documents choose among a node's
descriptors."""

from __future__ import annotations

import dataclasses

import pytest
from directory_support import make_network, make_node
from hypothesis import given
from hypothesis import strategies as st

from overlay import (
    DIRECTORY_FOLLOW_S,
    DIRECTORY_REFRESH_S,
    DIRECTORY_RETRY_MAX_S,
    DIRECTORY_RETRY_S,
    DIRECTORY_SETTLE_S,
    VOICE,
    DirectorySchedule,
    FetchDocument,
    NodeDescriptor,
    NodeRole,
    PublishDescriptor,
    TopologyDocument,
    UsageError,
    build_document,
    descriptor_rank,
)

EPOCH_S = 600
EPOCH = 7
T0 = EPOCH * EPOCH_S + 100.0  # unix seconds, inside EPOCH

_ME, _ = make_node(9, NodeRole.MIX, 2, EPOCH, EPOCH_S)
_NET = [d for d, _ in make_network(EPOCH, EPOCH_S)]


def _doc(*extra: NodeDescriptor) -> TopologyDocument:
    descs = [*_NET, *extra]
    return build_document(EPOCH, epoch_length_s=EPOCH_S, geometry=VOICE, descriptors=descs)


LISTED = _doc(_ME)
ABSENT = _doc()
MOVED = _doc(dataclasses.replace(_ME, port=_ME.port + 1))  # listed at another port
DOCS = {"listed": LISTED, "absent": ABSENT, "moved": MOVED}


def _schedule() -> DirectorySchedule:
    return DirectorySchedule(_ME.node_id, port=_ME.port, client_port=None, epoch_length_s=EPOCH_S)


def test_publish_until_listed_then_fetch_only_until_the_epoch_changes() -> None:
    s = _schedule()
    assert s.start_round(EPOCH) == PublishDescriptor(EPOCH)
    s.published(EPOCH)
    got = s.fetched(ABSENT, now=0.0, wall=T0)
    assert got.adopt and not got.listed and not got.listed_changed
    assert s.start_round(EPOCH) == PublishDescriptor(EPOCH)  # not listed: publish again
    s.published(EPOCH)
    got = s.fetched(LISTED, now=1.0, wall=T0 + 1)
    assert got.adopt and got.listed and got.listed_changed
    assert s.start_round(EPOCH) == FetchDocument(EPOCH)
    assert s.start_round(EPOCH + 1) == PublishDescriptor(EPOCH + 1)  # new epoch: new keys


def test_a_failed_publish_is_retried_and_a_failure_waits_retry_s() -> None:
    s = _schedule()
    assert s.start_round(EPOCH) == PublishDescriptor(EPOCH)
    assert s.failed() == DIRECTORY_RETRY_S
    assert s.start_round(EPOCH) == PublishDescriptor(EPOCH)


def test_a_document_listing_the_node_at_other_ports_does_not_count() -> None:
    s = _schedule()
    s.start_round(EPOCH)
    s.published(EPOCH)
    assert not s.fetched(MOVED, now=0.0, wall=T0).listed
    assert s.start_round(EPOCH) == PublishDescriptor(EPOCH)


def test_the_same_bytes_are_adopted_once() -> None:
    s = _schedule()
    s.start_round(EPOCH)
    assert s.fetched(LISTED, now=0.0, wall=T0).adopt
    again = TopologyDocument.from_bytes(LISTED.to_bytes())
    assert not s.fetched(again, now=1.0, wall=T0 + 1).adopt
    assert s.document is LISTED
    assert s.fetched(ABSENT, now=2.0, wall=T0 + 2).adopt


def test_follow_closely_until_settled_then_refresh() -> None:
    s = _schedule()
    s.start_round(EPOCH)
    assert s.fetched(LISTED, now=0.0, wall=T0).wait_s == DIRECTORY_FOLLOW_S
    assert s.fetched(LISTED, now=DIRECTORY_SETTLE_S, wall=T0).wait_s == DIRECTORY_FOLLOW_S
    settled = s.fetched(LISTED, now=DIRECTORY_SETTLE_S + 0.1, wall=T0)
    assert settled.wait_s == min(EPOCH_S / 20, DIRECTORY_REFRESH_S)
    # A served-from-cache document means the authorities failed: retry soon.
    assert s.fetched(LISTED, now=100.0, wall=T0, from_cache=True).wait_s == DIRECTORY_RETRY_S


def test_the_wait_ends_at_the_next_epoch_but_is_never_shorter_than_retry_s() -> None:
    s = _schedule()
    s.start_round(EPOCH)
    s.fetched(LISTED, now=0.0, wall=T0)
    boundary = (EPOCH + 1) * EPOCH_S
    assert s.fetched(LISTED, now=100.0, wall=boundary - 10).wait_s == 10
    assert s.fetched(LISTED, now=101.0, wall=boundary - 0.2).wait_s == DIRECTORY_RETRY_S
    assert s.until_next_epoch(boundary + 5) == 0.5  # already past: the least wake-up


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epoch_length_s": 0},
        {"epoch_length_s": 1.5},
        {"epoch_length_s": True},
        {"retry_s": 0.0},
        {"refresh_s": -1.0},
        {"settle_s": float("nan")},
        {"follow_s": "1"},
        {"node_id": bytes(32)},
    ],
)
def test_bad_settings_are_usage_errors(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"port": 1, "client_port": None, "epoch_length_s": EPOCH_S}
    with pytest.raises(UsageError):
        DirectorySchedule(**{"node_id": bytes(16), **args, **kwargs})  # type: ignore[arg-type]


_ROUND = st.tuples(
    st.integers(0, 2),  # epochs forward
    st.booleans(),  # the publish (if asked) succeeds
    st.sampled_from(["fail", "listed", "absent", "moved"]),  # the fetch
    st.booleans(),  # served from the cache
    st.floats(0.0, 100.0),  # seconds since the last round
)


@given(st.lists(_ROUND, max_size=40))
def test_any_sequence_of_failures_and_successes(
    rounds: list[tuple[int, bool, str, bool, float]],
) -> None:
    """Against a model of the rules: publish exactly when the epoch's descriptor was not
    accepted or the node is not listed; adopt exactly new bytes; waits within bounds; a
    failure waits within the back-off's bounds for the run of failures it ends."""
    s = _schedule()
    epoch, now, wall = EPOCH, 0.0, T0
    published_for, listed, held, changed_at = -1, False, b"", 0.0
    failures = 0

    def backed_off(wait: float) -> bool:
        ceiling = min(DIRECTORY_RETRY_MAX_S, DIRECTORY_RETRY_S * 2.0 ** (failures - 1))
        if failures <= 1:
            return wait == DIRECTORY_RETRY_S
        return max(DIRECTORY_RETRY_S, ceiling / 2) <= wait <= ceiling

    for forward, publish_ok, fetch, from_cache, dt in rounds:
        epoch += forward
        now += dt
        wall = max(wall + dt, float(epoch * EPOCH_S))
        step = s.start_round(epoch)
        want_publish = published_for != epoch or not listed
        assert step == (PublishDescriptor(epoch) if want_publish else FetchDocument(epoch))
        if want_publish:
            if not publish_ok:
                failures += 1
                assert backed_off(s.failed())
                continue
            s.published(epoch)
            published_for, failures = epoch, 0
        if fetch == "fail":
            failures += 1
            assert backed_off(s.failed())
            continue
        doc = DOCS[fetch]
        got = s.fetched(doc, now=now, wall=wall, from_cache=from_cache)
        assert got.adopt == (doc.to_bytes() != held)
        if got.adopt:
            held, changed_at = doc.to_bytes(), now
        assert got.listed == (fetch == "listed")
        assert got.listed_changed == (got.listed != listed)
        listed = got.listed
        until = max(0.5, (epoch + 1) * EPOCH_S - wall)
        failures = failures + 1 if from_cache else 0
        if from_cache:
            assert backed_off(got.wait_s) or got.wait_s == max(DIRECTORY_RETRY_S, until)
        elif now - changed_at > DIRECTORY_SETTLE_S:
            want = min(EPOCH_S / 20, DIRECTORY_REFRESH_S, until)
            assert got.wait_s == max(DIRECTORY_RETRY_S, want)
        else:
            assert got.wait_s == max(DIRECTORY_RETRY_S, min(DIRECTORY_FOLLOW_S, until))
        assert (
            DIRECTORY_RETRY_S
            <= got.wait_s
            <= max(DIRECTORY_FOLLOW_S, DIRECTORY_REFRESH_S, DIRECTORY_RETRY_MAX_S)
        )


def test_repeated_failures_back_off_with_jitter_and_a_success_resets() -> None:
    """The n-th consecutive failure waits retry_s * 2**(n-1) (capped) times [0.5, 1): never
    two nodes' in step, never below retry_s, never above retry_max_s."""
    assert _schedule().failed() == DIRECTORY_RETRY_S  # one glitch: retried after retry_s
    runs = []
    for seed in range(20):
        fill = bytes([(seed * 37 + 11) % 256])  # a constant draw per node, another per node
        s = DirectorySchedule(_ME.node_id, port=_ME.port, client_port=None,
                              epoch_length_s=EPOCH_S, rng=lambda n, b=fill: b * n)  # fmt: skip
        runs.append([s.failed() for _ in range(10)])
    for run in runs:
        for n, wait in enumerate(run, start=1):
            ceiling = min(DIRECTORY_RETRY_MAX_S, DIRECTORY_RETRY_S * 2 ** (n - 1))
            assert max(DIRECTORY_RETRY_S, ceiling / 2) <= wait <= ceiling
        assert run[-1] >= DIRECTORY_RETRY_MAX_S / 2  # grown to the cap
    assert len({run[5] for run in runs}) > 10  # jittered: the nodes do not retry in step
    s = _schedule()
    for _ in range(6):
        s.failed()
    s.published(EPOCH)
    assert s.failed() == DIRECTORY_RETRY_S  # an authority answered: the run of failures ended
    for _ in range(6):
        s.failed()
    s.fetched(LISTED, now=0.0, wall=T0)
    assert s.failed() == DIRECTORY_RETRY_S
    with pytest.raises(UsageError, match="retry_max_s"):
        DirectorySchedule(_ME.node_id, port=1, client_port=None, epoch_length_s=EPOCH_S,
                          retry_s=5.0, retry_max_s=2.0)  # fmt: skip


def test_the_latest_published_descriptor_of_an_epoch_wins_whatever_its_bytes() -> None:
    """A node restarted on a new address publishes again for the same epochs: the later
    descriptor is listed, whichever order the descriptors come in."""
    for port in (_ME.port - 1, _ME.port + 1):  # the new bytes sort below and above the old
        new = dataclasses.replace(_ME, port=port, published_at=_ME.published_at + 60)
        assert descriptor_rank(new) > descriptor_rank(_ME)
        for order in ([_ME, new], [new, _ME]):
            doc = build_document(EPOCH, epoch_length_s=EPOCH_S, geometry=VOICE, descriptors=order)
            assert doc.by_id[_ME.node_id].port == port


def test_newer_epoch_keys_outrank_a_later_signature() -> None:
    later = dataclasses.replace(_ME, published_at=_ME.published_at + 600)
    ahead_keys = dict(_ME.epoch_keys)
    ahead_keys[EPOCH + 2] = ahead_keys[EPOCH + 1]
    ahead = dataclasses.replace(_ME, epoch_keys=ahead_keys)
    assert descriptor_rank(ahead) > descriptor_rank(later)
    # Exact ties of epoch and time fall to the bytes, the same on every authority.
    a, b = dataclasses.replace(_ME, port=1), dataclasses.replace(_ME, port=2)
    assert (descriptor_rank(a) < descriptor_rank(b)) == (a.to_bytes() < b.to_bytes())
