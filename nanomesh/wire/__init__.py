"""The only package that knows bytes: messages, codec, envelope and framing,
the RPC frames and the seed-file encoding."""

from nanomesh.wire.codec import pack_message_obj, pack_messages, unpack_messages
from nanomesh.wire.envelope import (
    FRAME_PREFIX_LEN,
    MAX_DATAGRAM,
    MAX_DATAGRAM_IN,
    MAX_FRAME,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
    Keyring,
    derive_secret,
    frame,
    frame_length,
    generate_key,
    open_box,
    open_envelope,
    seal,
    seal_box,
)
from nanomesh.wire.messages import (
    Ack,
    Address,
    Alive,
    DatagramMessage,
    Dead,
    IndirectPing,
    MemberDigest,
    MemberState,
    Message,
    MessageType,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    ProfileRequest,
    PushPull,
    PushPullReply,
    StreamMessage,
    Suspect,
)
from nanomesh.wire.seedfile import pack_seed_file, unpack_seed_file
from nanomesh.wire.service_traffic import (
    Event,
    Request,
    Response,
    decode_event,
    decode_request,
    decode_response,
    encode_event,
    encode_request,
    encode_response,
)

__all__ = [
    "FRAME_PREFIX_LEN", "MAX_DATAGRAM", "MAX_DATAGRAM_IN", "MAX_FRAME", "PROTOCOL_MAX",
    "PROTOCOL_MIN", "PROTOCOL_VERSION", "Ack", "Address", "Alive", "DatagramMessage", "Dead",
    "Event", "IndirectPing", "Keyring", "MemberDigest", "MemberState", "Message", "MessageType",
    "Nack", "Ping", "ProfileRecord", "ProfileReply", "ProfileRequest", "PushPull", "PushPullReply",
    "Request", "Response", "StreamMessage", "Suspect", "decode_event", "decode_request",
    "decode_response", "derive_secret", "encode_event", "encode_request", "encode_response",
    "frame", "frame_length", "generate_key", "open_box", "open_envelope", "pack_message_obj",
    "pack_messages", "pack_seed_file", "seal", "seal_box", "unpack_messages",
    "unpack_seed_file",
]
