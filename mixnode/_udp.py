"""UDP receive helpers: the kernel's per-socket drop count, and a filter by datagram length.

    >>> import socket
    >>> s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    >>> kernel_drops(s)  # datagrams the kernel dropped for this socket so far
    0
    >>> attach_length_filter(s, [606, 686])  # the kernel keeps only these payload lengths
    >>> counter = DropCount()
    >>> counter.update(7), counter.update(9)  # cumulative kernel count -> new drops
    (7, 2)
    >>> s.close()

Linux only (SO_MEMINFO since 3.17, its drop count since 4.7; SO_ATTACH_FILTER). A socket
whose receive buffer is full loses datagrams inside the kernel, unseen by the process;
the kernel counts them per socket (``sk_drops``, the ``drops`` column of /proc/net/udp),
together with the datagrams a socket filter refused. ``getsockopt(SO_MEMINFO)`` reads that
count for one socket in one system call, whether or not anything arrives (socket(7),
linux/sock_diag.h). Only counts leave: no address, no content.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

SO_MEMINFO = 55  # Linux asm-generic/socket.h: u32[SK_MEMINFO_VARS] of socket memory
SK_MEMINFO_DROPS = 8  # linux/sock_diag.h: index of sk_drops in SO_MEMINFO
SO_ATTACH_FILTER = 26  # Linux asm-generic/socket.h: classic BPF socket filter
UDP_HEADER_LEN = 8  # bytes; a UDP socket filter sees the datagram from its UDP header on
_U32 = struct.Struct("=I")
_WRAP = 1 << 32  # sk_drops is reported as an unsigned 32-bit number
# Classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
_INSN = struct.Struct("=HBBI")
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = length of the packet
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: if A == k then skip jt else skip jf
_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)
_KEEP_ALL = 0xFFFFFFFF
_MAX_LENGTHS = 250  # jump offsets are one byte


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for ``sock`` since it was opened (mod 2**32).

    Counts a full receive buffer and refusals of a socket filter alike. Raises OSError
    where SO_MEMINFO does not exist (not Linux) or the socket is closed.
    """
    size = (SK_MEMINFO_DROPS + 1) * _U32.size
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    if len(raw) < size:
        raise OSError("SO_MEMINFO has no drop count on this kernel (Linux >= 4.7)")
    return int(_U32.unpack_from(raw, SK_MEMINFO_DROPS * _U32.size)[0])


class DropCount:
    """Turns the kernel's cumulative 32-bit drop count into increments for a counter."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None  # the last count seen; None before the first

    def update(self, count: int) -> int:
        """Datagrams dropped since the last count seen; the count wraps at 2**32."""
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
