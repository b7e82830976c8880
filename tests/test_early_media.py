"""The peer's media that overtakes its ANSWER waits in ``Caller._early`` (at most
``EARLY_MEDIA_MAX``) and opens once the keys come. A gateway that replays those early
packets gets no packet counted twice: each of the peer's packets counts as media once,
the copies stay cover, and no count goes negative."""

from __future__ import annotations

import trio
import trio.testing
from cryptography.exceptions import InvalidTag
from test_call import MemoryNet, _network, _pair, converse

from client.call import EARLY_MEDIA_MAX, SignalFramer

REPLAYS = 3  # extra copies of each early delivery


async def test_replayed_early_media_is_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    doc, secrets = _network()
    replayed = 0
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, b = _pair(net, doc, mean_delay_s=0.01)
        spy = SignalFramer(a.contact.signal_key, a.me, b.me)  # opens what b signals to a

        def hold(mailbox: bytes, message: bytes) -> float:
            nonlocal replayed
            if mailbox != a.me.mailbox:
                return 0.0
            try:
                spy.open(message)
            except InvalidTag:  # media or cover: replayed while a has no keys
                if not a.media_in.listening and a.call.role is not None:
                    for _ in range(REPLAYS):
                        a.deliver(message, trio.current_time())
                    replayed += REPLAYS
                return 0.0
            return 0.2  # b's signaling to a: its ANSWER arrives after b's first media

        net.hold = hold
        await nursery.start(a.run)
        await nursery.start(b.run)
        await converse(a, b, lambda: trio.sleep(2.0))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert replayed > 0
    assert 1 <= a.received["early_media"] <= EARLY_MEDIA_MAX
    assert a.received["media"] == len(a.rx.arrived)  # each of b's packets once
    assert all(n >= 0 for n in a.received.values())
    assert b.tx.sent and set(b.tx.sent) <= set(a.rx.arrived)  # none of b's media lost
