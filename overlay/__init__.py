"""Phantom Net Mode C protocol core: no sockets, no clocks, no trio.

    >>> from overlay import VOICE
    >>> VOICE.packet_len
    636

Everything public is re-exported here; the ``_``-prefixed modules are implementation.
"""

from ._errors import BadCommand as BadCommand
from ._errors import GeometryError as GeometryError
from ._errors import MacMismatch as MacMismatch
from ._errors import PacketError as PacketError
from ._errors import PayloadTampered as PayloadTampered
from ._errors import PhantomError as PhantomError
from ._errors import UnknownVersion as UnknownVersion
from ._errors import UsageError as UsageError
from ._errors import WrongLength as WrongLength
from ._geometry import BULK as BULK
from ._geometry import MAILBOX_ID_LEN as MAILBOX_ID_LEN
from ._geometry import NODE_ID_LEN as NODE_ID_LEN
from ._geometry import SPHINX_VERSION as SPHINX_VERSION
from ._geometry import SURB_ID_LEN as SURB_ID_LEN
from ._geometry import VOICE as VOICE
from ._geometry import Geometry as Geometry
from ._link import AEAD_TAG_LEN as AEAD_TAG_LEN
from ._link import COOKIE_LEN as COOKIE_LEN
from ._link import COOKIE_PERIOD_S as COOKIE_PERIOD_S
from ._link import LINK_VERSION as LINK_VERSION
from ._link import Challenged as Challenged
from ._link import ClientLink as ClientLink
from ._link import CookieJar as CookieJar
from ._link import Delivery as Delivery
from ._link import DownlinkKind as DownlinkKind
from ._link import Frame as Frame
from ._link import FrameType as FrameType
from ._link import GatewaySession as GatewaySession
from ._link import LinkAuthError as LinkAuthError
from ._link import LinkCodec as LinkCodec
from ._link import LinkError as LinkError
from ._link import LinkEvent as LinkEvent
from ._link import MailboxKey as MailboxKey
from ._link import MailboxProofError as MailboxProofError
from ._link import ReplayWindow as ReplayWindow
from ._link import SessionKeys as SessionKeys
from ._link import SessionUnknown as SessionUnknown
from ._link import SessionWatch as SessionWatch
from ._link import attach_cookie as attach_cookie
from ._link import backoff_delay as backoff_delay
from ._link import mailbox_id as mailbox_id
from ._sphinx import Deliver as Deliver
from ._sphinx import DeliverReply as DeliverReply
from ._sphinx import Discard as Discard
from ._sphinx import Forward as Forward
from ._sphinx import Hop as Hop
from ._sphinx import ProcessResult as ProcessResult
from ._sphinx import Rng as Rng
from ._sphinx import RoutingCommand as RoutingCommand
from ._sphinx import Surb as Surb
from ._sphinx import SurbKeys as SurbKeys
from ._sphinx import create_drop as create_drop
from ._sphinx import create_forward as create_forward
from ._sphinx import create_reply as create_reply
from ._sphinx import create_surb as create_surb
from ._sphinx import generate_private_key as generate_private_key
from ._sphinx import lioness_decrypt as lioness_decrypt
from ._sphinx import lioness_encrypt as lioness_encrypt
from ._sphinx import open_reply as open_reply
from ._sphinx import process_packet as process_packet
from ._sphinx import public_key as public_key
from ._sphinx import surb_len as surb_len
from ._topology import DEFAULT_MAX_DELAY_US as DEFAULT_MAX_DELAY_US
from ._topology import DEFAULT_MIX_LAYERS as DEFAULT_MIX_LAYERS
from ._topology import DOCUMENT_VERSION as DOCUMENT_VERSION
from ._topology import MAX_NETWORK_BYTES as MAX_NETWORK_BYTES
from ._topology import DirectoryError as DirectoryError
from ._topology import DirectoryFieldError as DirectoryFieldError
from ._topology import DocumentSignature as DocumentSignature
from ._topology import InvalidKeyError as InvalidKeyError
from ._topology import NetworkBundle as NetworkBundle
from ._topology import NodeDescriptor as NodeDescriptor
from ._topology import NodeRole as NodeRole
from ._topology import NodeWithdrawal as NodeWithdrawal
from ._topology import NoRouteError as NoRouteError
from ._topology import SignedDocument as SignedDocument
from ._topology import SignedNetwork as SignedNetwork
from ._topology import TopologyDocument as TopologyDocument
from ._topology import build_document as build_document
from ._topology import canonical_json as canonical_json
from ._topology import descriptor_host_problem as descriptor_host_problem
from ._topology import document_digest as document_digest
from ._topology import ed25519_key_problem as ed25519_key_problem
from ._topology import epoch_at as epoch_at
from ._topology import epoch_start as epoch_start
from ._topology import exp_delay_us as exp_delay_us
from ._topology import layer_of as layer_of
from ._topology import load_json as load_json
from ._topology import network_fingerprint as network_fingerprint
from ._topology import network_signature_is_valid as network_signature_is_valid
from ._topology import node_id_for as node_id_for
from ._topology import parse_epoch as parse_epoch
from ._topology import seconds_until_next_epoch as seconds_until_next_epoch
from ._topology import select_path as select_path
from ._topology import sign_descriptor as sign_descriptor
from ._topology import sign_document as sign_document
from ._topology import sign_network as sign_network
from ._topology import sign_withdrawal as sign_withdrawal
from ._topology import signature_is_valid as signature_is_valid
from ._topology import uniform_index as uniform_index
from ._topology import verify_descriptor as verify_descriptor
from ._topology import verify_document as verify_document
from ._topology import verify_withdrawal as verify_withdrawal
from ._topology import x25519_key_problem as x25519_key_problem
from ._version import VERSION as VERSION

__version__ = VERSION
