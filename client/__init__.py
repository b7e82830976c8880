"""Phantom Net Mode C caller side: voice codec, media packets, jitter buffer, signaling.

Everything public is re-exported here; the ``_``-prefixed modules are implementation.
"""

from ._jitter import Conceal as Conceal
from ._jitter import Frame as Frame
from ._jitter import JitterBuffer as JitterBuffer
from ._jitter import JitterConfig as JitterConfig
from ._jitter import JitterStats as JitterStats
from ._jitter import render as render
from ._media import REPLAY_WINDOW as REPLAY_WINDOW
from ._media import Direction as Direction
from ._media import MediaCounters as MediaCounters
from ._media import MediaError as MediaError
from ._media import MediaForged as MediaForged
from ._media import MediaKeys as MediaKeys
from ._media import MediaMalformed as MediaMalformed
from ._media import MediaPacket as MediaPacket
from ._media import MediaReceiver as MediaReceiver
from ._media import MediaReplayed as MediaReplayed
from ._media import MediaSender as MediaSender
from ._media import ReplayWindow as ReplayWindow
from ._media import check_fits as check_fits
from ._media import derive_media_keys as derive_media_keys
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
