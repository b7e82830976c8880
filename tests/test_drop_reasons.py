"""One drop vocabulary: every DropReason is exported under a label that existed before."""

from __future__ import annotations

import inspect

import pytest

import client
import overlay
from mixnode.metrics import DROP_REASONS, PROCESSING_BUCKETS_S, NodeMetrics
from overlay import CLIENT_DROP_REASONS, EXPORTED_DROP_REASONS, DropReason, PacketError, UsageError

# The label values of phantom_drops_total{reason}, in exposition order, as operators'
# dashboards know them: this list must not change.
LABELS = (
    "malformed", "wrong_length", "unknown_version", "mac_mismatch", "link_auth",
    "attach_proof", "bad_command", "payload_tampered", "replay", "late", "queue_full",
    "delay_too_long", "unknown_next_hop", "unknown_epoch", "mailbox_full", "no_client",
    "peer_queue_full", "send_failed", "link_loss", "shutdown", "other",
)  # fmt: skip


def test_the_exported_labels_are_pinned() -> None:
    assert tuple(str(r) for r in EXPORTED_DROP_REASONS) == LABELS == DROP_REASONS


def test_every_reason_is_exported_under_an_exported_label() -> None:
    for reason in DropReason:
        if reason in CLIENT_DROP_REASONS:  # a caller's own; no node counts it
            assert reason not in EXPORTED_DROP_REASONS
            continue
        assert reason.exported in EXPORTED_DROP_REASONS, reason
        assert reason.exported.exported is reason.exported
    assert DropReason.STALE.exported is DropReason.LATE
    assert DropReason.NO_SESSION.exported is DropReason.NO_CLIENT
    assert DropReason.HANDLER_ERROR.exported is DropReason.HANDLER_ERROR
    assert str(DropReason.HANDLER_ERROR) == "other"


def test_every_packet_error_names_a_drop_reason() -> None:
    errors = [
        obj
        for module in (overlay, client)
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, PacketError)
    ]
    assert len(errors) >= 18
    for cls in errors:
        assert isinstance(cls.reason, DropReason), cls


def test_count_drops_lands_every_reason_on_its_label() -> None:
    m = NodeMetrics()
    node_reasons = [r for r in DropReason if r not in CLIENT_DROP_REASONS]
    m.count_drops({r: i + 1 for i, r in enumerate(node_reasons)})
    want = dict.fromkeys(LABELS, 0)
    for i, r in enumerate(node_reasons):
        want[str(r.exported)] += i + 1
    text = m.registry.render()
    got = {
        line.split('"')[1]: int(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("phantom_drops_total{")
    }
    assert list(got) == list(LABELS) and got == want


def test_histogram_merges_counts_bucketed_elsewhere() -> None:
    m = NodeMetrics()
    h = m.processing_seconds
    h.observe(0.0002)
    counts = [0] * (len(PROCESSING_BUCKETS_S) + 1)
    counts[0], counts[-1] = 2, 1
    h.merge_counts(counts, 7.5)
    assert h.count == 4 and h.sum == pytest.approx(7.5002)
    text = m.registry.render()
    assert 'phantom_processing_seconds_bucket{le="5e-05"} 2' in text
    assert 'phantom_processing_seconds_bucket{le="+Inf"} 4' in text
    with pytest.raises(UsageError):
        h.merge_counts(counts[:-1], 0.0)
    with pytest.raises(UsageError):
        h.merge_counts([-1] + counts[1:], 0.0)
