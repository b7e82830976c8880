"""Call signaling for Mode C: fixed binary messages and a sans-IO state machine as data.

    >>> from client import Call, InMemoryChannel, Send, StartMedia
    >>> a, b = InMemoryChannel.pair()
    >>> caller = Call(a, reply_mailbox=b"gw-a|box-a", surbs=b"surbs-a")
    >>> callee = Call(b, reply_mailbox=b"gw-b|box-b", surbs=b"surbs-b")
    >>> def deliver(actions, to, now):  # what the gateway link does, here in memory
    ...     sent = [act.envelope for act in actions if isinstance(act, Send)]
    ...     return [out for envelope in sent for out in to.handle(envelope, now)]
    >>> back = deliver(caller.place(0.0), callee, 0.5)  # OFFER; the callee sends ANSWER, RING
    >>> _ = deliver(back, caller, 1.0)
    >>> got = deliver(callee.accept(2.0), caller, 2.5)  # the user picks up: ACCEPT
    >>> caller.state.name, callee.state.name
    ('ACTIVE', 'ACTIVE')
    >>> [type(x).__name__ for x in got if isinstance(x, StartMedia)]
    ['StartMedia']

Every message is sealed by the E2EE ``SecureChannel`` (authenticated, replay-protected).
On top of that:

- the call id is BLAKE2b(conversation id, caller's nonce): an offer replayed into another
  conversation carries a call id that does not match, and is dropped;
- the offer (mode, media type, voice profile, anti-downgrade flag, reply path) is MACed by
  the channel's AEAD; the answer echoes the offer's SHA-256 and mode under an HMAC keyed
  by the offer's message secret, the accept carries an HMAC keyed by the call secret, and
  the call secret (hence every media key) covers the offer and answer bytes: a mode
  changed anywhere on the way ends the call or leaves media undecryptable;
- only the modes in ``CallPolicy.supported_modes`` are accepted (this client speaks
  Mode C, ``PARANOID``, only); anything else is declined, never silently replaced;
- a mode switch to a less private mode needs the user's explicit approval on both sides;
- in Mode C a ``CALL_CANDIDATE`` (which could reveal an IP address) ends the call.

The per-call secret is the hybrid one: HKDF over both messages' channel secrets (so both
ratchet keys, and the identities behind the channel, contribute), an ephemeral X25519
agreement and an ML-KEM-768 encapsulation carried in OFFER/ANSWER, and the transcript
(``keys``); Mode C refuses an offer without them (``SignalDowngraded``, counted). Mode
changes and refusals go to the caller's local ``SecurityLog``. The call's secrets are
zeroed when it ends and on ``close``. ``CALL_REKEY`` ratchets one direction's media
secret forward with fresh material from the rekey message's own secret.

The package: ``messages`` (the vocabulary and its wire codec), ``keys`` (the key schedule),
``states`` (the state table: one target state per state, event and guard) and ``call``
(``Call``, which runs each event's checks and returns actions).
"""

from .call import MAX_ENDED_IDS as MAX_ENDED_IDS
from .call import MAX_HELD as MAX_HELD
from .call import Action as Action
from .call import ApprovalNeeded as ApprovalNeeded
from .call import Call as Call
from .call import CallEnded as CallEnded
from .call import CallPolicy as CallPolicy
from .call import CancelTimer as CancelTimer
from .call import IncomingCall as IncomingCall
from .call import MediaKeysChanged as MediaKeysChanged
from .call import ModeChanged as ModeChanged
from .call import ModeSwitchRefused as ModeSwitchRefused
from .call import RemoteRinging as RemoteRinging
from .call import Send as Send
from .call import SetTimer as SetTimer
from .call import SignalCounters as SignalCounters
from .call import StartMedia as StartMedia
from .keys import CALL_LABEL as CALL_LABEL
from .keys import CallerEphemeral as CallerEphemeral
from .keys import call_id_for as call_id_for
from .keys import call_secrets as call_secrets
from .keys import callee_hybrid as callee_hybrid
from .keys import hybrid_transcript as hybrid_transcript
from .messages import FLAG_NO_DOWNGRADE as FLAG_NO_DOWNGRADE
from .messages import KEM_CIPHERTEXT_LEN as KEM_CIPHERTEXT_LEN
from .messages import KEM_PUBLIC_LEN as KEM_PUBLIC_LEN
from .messages import MAX_OPAQUE_LEN as MAX_OPAQUE_LEN
from .messages import SIGNAL_VERSION as SIGNAL_VERSION
from .messages import Accept as Accept
from .messages import Answer as Answer
from .messages import Candidate as Candidate
from .messages import Decline as Decline
from .messages import EndReason as EndReason
from .messages import Hangup as Hangup
from .messages import MediaType as MediaType
from .messages import Message as Message
from .messages import MessageType as MessageType
from .messages import ModeSwitchAck as ModeSwitchAck
from .messages import ModeSwitchRequest as ModeSwitchRequest
from .messages import Offer as Offer
from .messages import PrivacyMode as PrivacyMode
from .messages import Rekey as Rekey
from .messages import Ring as Ring
from .messages import SignalDowngraded as SignalDowngraded
from .messages import SignalForged as SignalForged
from .messages import SignalingError as SignalingError
from .messages import SignalMalformed as SignalMalformed
from .messages import decode as decode
from .messages import encode as encode
from .seclog import MAX_SECURITY_RECORDS as MAX_SECURITY_RECORDS
from .seclog import SecurityEvent as SecurityEvent
from .seclog import SecurityLog as SecurityLog
from .seclog import SecurityRecord as SecurityRecord
from .states import DEFERRED as DEFERRED
from .states import TRANSITIONS as TRANSITIONS
from .states import CallState as CallState
from .states import Event as Event
from .states import Guard as Guard
from .states import Role as Role
from .states import Timer as Timer
from .states import state_diagram as state_diagram
from .states import state_table as state_table
