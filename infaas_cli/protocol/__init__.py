"""The infaas wire protocol: envelope, typed message bodies, tensors, error codes. No sockets here."""

from infaas_cli.protocol import messages
from infaas_cli.protocol.envelope import (ERROR_CODES, MESSAGE_TYPES, PROTOCOL_VERSION, Message, ProtocolError, body_of,
                                          check_frames, decode, encode, error, new_id, peek_id, tensors_of)
from infaas_cli.protocol.messages import BODIES, VariantSpec
from infaas_cli.protocol.tensors import (frame_buffer, pack_output, pack_tensor, pack_tensors, unpack_output, unpack_tensor,
                                         unpack_tensors, zero_copy)

__all__ = ["BODIES", "ERROR_CODES", "MESSAGE_TYPES", "PROTOCOL_VERSION", "Message", "ProtocolError", "VariantSpec",
           "body_of", "check_frames", "decode", "frame_buffer", "encode", "error", "messages", "new_id", "peek_id", "pack_output", "pack_tensor",
           "pack_tensors", "tensors_of", "unpack_output", "unpack_tensor", "unpack_tensors", "zero_copy"]
