"""Why a packet was dropped: one vocabulary for errors, counters and metrics.

    >>> from overlay import DropReason, MacMismatch
    >>> MacMismatch.reason is DropReason.MAC_MISMATCH
    True
    >>> DropReason.STALE.exported, str(DropReason.STALE.exported)
    (<DropReason.LATE: 'late'>, 'late')

Every drop a node or gateway counts is a ``DropReason``. A reason's value is its name in
the node's own counters (``NodeCore.drops``, ``GatewayCore.drops``); ``exported`` is the
label value it is counted under in ``phantom_drops_total{reason}``. Most reasons are
exported as themselves; a few finer ones are folded into a broader exported label
(``stale`` counts as ``late``, ``no_session`` as ``no_client`` ...). ``EXPORTED_DROP_REASONS``
lists the exported labels in their exposition order.
"""

from __future__ import annotations

import enum
from typing import Final


class DropReason(enum.StrEnum):
    """Why a packet (or a client frame) was dropped; the value is the counter's name."""

    # Exported as themselves, in the order of phantom_drops_total's series.
    MALFORMED = "malformed"  # a Sphinx packet failed a check no finer reason names
    WRONG_LENGTH = "wrong_length"  # not the geometry's packet length / no frame's length
    UNKNOWN_VERSION = "unknown_version"  # the version byte names an unknown format
    MAC_MISMATCH = "mac_mismatch"  # the header MAC does not verify under any held key
    LINK_AUTH = "link_auth"  # an encrypted client frame does not open
    ATTACH_PROOF = "attach_proof"  # an ATTACH does not prove its mailbox
    BAD_COMMAND = "bad_command"  # unknown routing command or out-of-range fields
    PAYLOAD_TAMPERED = "payload_tampered"  # the payload's zero tag did not survive
    REPLAY = "replay"  # the replay tag was seen before
    LATE = "late"  # the release time passed by more than the late-drop limit
    QUEUE_FULL = "queue_full"  # the delay queue (or its share for the previous hop) is full
    DELAY_TOO_LONG = "delay_too_long"  # the sender asked for more than the delay cap
    UNKNOWN_NEXT_HOP = "unknown_next_hop"  # the next hop is in no known document
    UNKNOWN_EPOCH = "unknown_epoch"  # no key is installed to open it
    MAILBOX_FULL = "mailbox_full"  # the client's mailbox holds its capacity
    NO_CLIENT = "no_client"  # a delivery for no client of this gateway
    PEER_QUEUE_FULL = "peer_queue_full"  # the queue towards a slow peer is full
    SEND_FAILED = "send_failed"  # the socket refused the datagram
    LINK_LOSS = "link_loss"  # link emulation lost it on purpose
    SHUTDOWN = "shutdown"  # held when the node stopped
    HANDLER_ERROR = "other"  # handling it raised (a bug): it costs this packet only
    # Finer reasons, exported under a broader label (see ``exported``).
    LINK_MALFORMED = "link_malformed"  # not a well-formed link frame
    STALE = "stale"  # a mailbox frame waited past its lifetime
    NO_SESSION = "no_session"  # a client frame names no session here
    TOO_MANY_MAILBOXES = "too_many_mailboxes"  # no room for one more mailbox
    MAILBOX_EVICTED = "mailbox_evicted"  # its mailbox was freed early to make room
    DELIVERY_BACKLOG = "delivery_backlog"  # the daemon/worker control socket was full
    # A caller's own drops (client.MediaError, SignalingError, ChannelError): end to end,
    # never seen or counted by a node, so not among phantom_drops_total's labels.
    MEDIA = "media"  # a media packet failed a check no finer reason names
    MEDIA_MALFORMED = "media_malformed"  # not a media packet's layout
    MEDIA_FORGED = "media_forged"  # its AEAD tag does not verify
    MEDIA_REPLAYED = "media_replayed"  # seen before, or older than the replay window
    NOT_MEDIA = "not_media"  # a payload of another kind where media was expected
    SIGNAL = "signal"  # a signaling message was refused
    SIGNAL_MALFORMED = "signal_malformed"  # does not decode
    SIGNAL_FORGED = "signal_forged"  # its MAC does not verify
    SIGNAL_DOWNGRADED = "signal_downgraded"  # a Mode C offer or answer without the hybrid keys
    CHANNEL = "channel"  # an envelope of the secure message channel did not open

    @property
    def exported(self) -> DropReason:
        """The label value this reason is counted under in ``phantom_drops_total``."""
        return _FOLDED.get(self, self)


# The finer reasons and the exported label each is counted under.
_FOLDED: Final[dict[DropReason, DropReason]] = {
    DropReason.LINK_MALFORMED: DropReason.MALFORMED,
    DropReason.STALE: DropReason.LATE,
    DropReason.NO_SESSION: DropReason.NO_CLIENT,
    DropReason.TOO_MANY_MAILBOXES: DropReason.MAILBOX_FULL,
    DropReason.MAILBOX_EVICTED: DropReason.MAILBOX_FULL,
    DropReason.DELIVERY_BACKLOG: DropReason.QUEUE_FULL,
}

# Reasons only a caller counts (end-to-end checks no node can make).
CLIENT_DROP_REASONS: Final[frozenset[DropReason]] = frozenset(
    {
        DropReason.MEDIA,
        DropReason.MEDIA_MALFORMED,
        DropReason.MEDIA_FORGED,
        DropReason.MEDIA_REPLAYED,
        DropReason.NOT_MEDIA,
        DropReason.SIGNAL,
        DropReason.SIGNAL_MALFORMED,
        DropReason.SIGNAL_FORGED,
        DropReason.SIGNAL_DOWNGRADED,
        DropReason.CHANNEL,
    }
)

# The label values of ``phantom_drops_total{reason}``, in exposition order.
EXPORTED_DROP_REASONS: Final[tuple[DropReason, ...]] = tuple(
    r for r in DropReason if r.exported is r and r not in CLIENT_DROP_REASONS
)
