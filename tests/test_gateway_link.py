"""The client's gateway link against a gateway that is not there: a clear error, no crash."""

from __future__ import annotations

import os
import socket

import pytest

from client.gateway_link import AttachError, open_gateway_link
from overlay import VOICE, public_key


async def test_attach_to_nobody_times_out_cleanly() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: sends may see ICMP port unreachable
    with pytest.raises(AttachError):
        async with open_gateway_link(
            VOICE, ("127.0.0.1", port), public_key(os.urandom(32)), b"m" * 16, timeout_s=0.6
        ):
            pass
