"""The infaas wire protocol: envelope, typed message bodies, tensors, error codes. No sockets here."""

from infaas_cli.protocol.envelope import (ERROR_CODES, MESSAGE_TYPES, PROTOCOL_VERSION, Message, ProtocolError, decode,
                                          encode, error, new_id, peek_id)
from infaas_cli.protocol.tensors import (_ALLOWED_DTYPES, pack_output, pack_tensor, pack_tensors, unpack_output,
                                         unpack_tensor, unpack_tensors)

__all__ = ["ERROR_CODES", "MESSAGE_TYPES", "PROTOCOL_VERSION", "Message", "ProtocolError", "decode", "encode", "error",
           "new_id", "peek_id", "pack_output", "pack_tensor", "pack_tensors", "unpack_output", "unpack_tensor",
           "unpack_tensors"]
