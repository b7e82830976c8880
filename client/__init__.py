"""Phantom Net Mode C caller side: voice codec, media packets, jitter buffer, signaling.

Everything public is re-exported here; the ``_``-prefixed modules are implementation.
"""

from ._speech import PesqResult as PesqResult
from ._speech import artificial_voice as artificial_voice
from ._speech import measure_delay as measure_delay
from ._speech import pesq_wb as pesq_wb
from ._speech import read_wav as read_wav
from ._speech import write_wav as write_wav
from ._voice import Decimator as Decimator
from ._voice import OpusDecoder as OpusDecoder
from ._voice import OpusEncoder as OpusEncoder
from ._voice import VoiceProfile as VoiceProfile
