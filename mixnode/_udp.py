"""UDP receive helpers: the kernel's per-socket drop count, and a filter by datagram length.

    >>> import socket
    >>> s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    >>> enable_drop_count(s)
    >>> attach_length_filter(s, [638, 686])  # the kernel keeps only these payload lengths
    >>> DropCount().update(None), DropCount().update(7)  # cumulative kernel count -> new drops
    (0, 7)
    >>> s.close()

Linux only (SO_RXQ_OVFL since 2.6.33, SO_ATTACH_FILTER). A socket whose receive buffer is
full loses datagrams inside the kernel, unseen by the process; with SO_RXQ_OVFL set, every
datagram the process reads carries, as ancillary data, the socket's cumulative drop count
(``sk_drops``, an unsigned 32-bit number) at the time it was queued (socket(7)). The count
includes datagrams a socket filter refused. Nothing here is secret or per-sender: only
counts leave.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

SO_RXQ_OVFL = 40  # Linux asm-generic/socket.h: ancillary uint32 drop count per datagram
SO_ATTACH_FILTER = 26  # Linux asm-generic/socket.h: classic BPF socket filter
UDP_HEADER_LEN = 8  # bytes; a UDP socket filter sees the datagram from its UDP header on
DROP_COUNT_SPACE = socket.CMSG_SPACE(4)  # ancillary bytes for one SO_RXQ_OVFL message
_U32 = struct.Struct("=I")
_WRAP = 1 << 32  # sk_drops is reported as an unsigned 32-bit number
# Classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
_INSN = struct.Struct("=HBBI")
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = length of the packet
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: if A == k then skip jt else skip jf
_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)
_KEEP_ALL = 0xFFFFFFFF
_MAX_LENGTHS = 250  # jump offsets are one byte


def enable_drop_count(sock: socket.socket) -> None:
    """Ask the kernel to attach the socket's drop count to each datagram (SO_RXQ_OVFL).

    Raises OSError where the option does not exist (not Linux).
    """
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)


def count_of(cmsg_data: bytes) -> int:
    """The count in the body of one SO_RXQ_OVFL control message (0 if it is short)."""
    return int(_U32.unpack_from(cmsg_data)[0]) if len(cmsg_data) >= _U32.size else 0


def drop_count(ancdata: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The kernel's cumulative drop count in one datagram's ancillary data, or None.

    ``ancdata`` is what ``socket.recvmsg`` returns. The kernel sends the count only once
    it is above zero, so None means "no drop yet" or "not enabled".
    """
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
            return count_of(data)
    return None


class DropCount:
    """Turns the kernel's cumulative 32-bit drop count into increments for a counter."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None  # the last count seen; None before the first

    def update(self, count: int | None) -> int:
        """Datagrams dropped since the last count seen (0 for None); wraps at 2**32."""
        if count is None:
            return 0
        new = count if self.last is None else (count - self.last) % _WRAP
        self.last = count
        return new


def length_filter(lengths: Iterable[int]) -> bytes:
    """A classic BPF program (bytes of sock_filter[]) that keeps UDP payloads of ``lengths``.

    Any other length is dropped by the kernel before it takes room in the receive buffer.
    Raises ValueError for no lengths, too many, or one out of range (1..65507 bytes).
    """
    wanted = sorted(set(lengths))
    if not wanted or len(wanted) > _MAX_LENGTHS:
        raise ValueError(f"a length filter keeps 1..{_MAX_LENGTHS} lengths")
    if not all(0 < n <= 65507 for n in wanted):
        raise ValueError("UDP payload lengths are 1..65507 bytes")
    prog = [_INSN.pack(_LD_LEN, 0, 0, 0)]
    for i, n in enumerate(wanted):  # on a match jump to the "keep" at the end
        prog.append(_INSN.pack(_JEQ_K, len(wanted) - i, 0, n + UDP_HEADER_LEN))
    prog.append(_INSN.pack(_RET_K, 0, 0, 0))
    prog.append(_INSN.pack(_RET_K, 0, 0, _KEEP_ALL))
    return b"".join(prog)


def attach_length_filter(sock: socket.socket, lengths: Iterable[int]) -> None:
    """Attach :func:`length_filter` to ``sock`` (SO_ATTACH_FILTER); OSError if refused.

    The kernel copies the program, so nothing needs to stay alive afterwards.
    """
    code = length_filter(lengths)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
