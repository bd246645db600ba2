"""The one error vocabulary of infaas: the error codes, the exception root, and their wire and exit-code forms.

Every failure infaas means to report is an `InfaasError` whose `code` is one of `ERROR_CODES`, the
protocol's stable codes (documented in docs/protocol.md; never renamed or removed). `wire_error`
turns any exception into the (code, reason, extra fields) of an `error` reply, and `exit_code`
turns it into the CLI's exit status:

* 0 — success
* 1 — the request cannot be done as asked; the message says what to change (the default)
* 2 — bad usage or configuration: a malformed request, option or setting
* 3 — nothing can serve it from here: the master is unreachable, no worker or backend fits,
  or the peer speaks another protocol version
* 4 — the SLO cannot be met now: no variant meets it, or the deadline passed in the queue
* 5 — infaas itself, its store or a peer misbehaved; see the logs
* 130 — interrupted (Ctrl-C)
"""

from __future__ import annotations

from typing import Any, ClassVar

#: Stable error codes (never renumbered or renamed) and what each means.
ERROR_CODES: dict[str, str] = {
    # protocol version 1
    "malformed": "the frame is not a msgpack map with v, type, id and body",
    "unsupported_version": "the peer speaks another protocol version",
    "unknown_type": "the message type is not part of this protocol",
    "bad_request": "a required field is missing or has the wrong type",
    "unknown_model": "no such model, variant or task/dataset",
    "no_variant": "no variant meets the SLO",
    "invalid_input": "input names, dtype or shape do not match the model",
    "not_found": "a record or artifact is missing",
    "checksum": "an artifact's sha256 does not match",
    "sequence_gap": "replication entries arrived out of order",
    "worker_lost": "the worker serving the query died and no other could take it",
    "overloaded": "the query's deadline passed before it could run",
    "unavailable": "no worker can serve the query",
    "internal": "an unexpected failure in the daemon (logged there)",
    # domain failures, so that every InfaasError travels with its own code
    "failed": "the operation failed for the reason given; no more specific code applies",
    "bad_config": "a setting, option or configuration file is invalid; the reason names it",
    "already_exists": "a record, file or running instance with that name already exists",
    "invalid_model": "the model file is not a usable ONNX model",
    "invalid_validation": "the validation data do not fit the model",
    "backend_unavailable": "the backend or hardware a variant needs is not available here",
    "artifact": "a stored artifact is missing, corrupt, or not named by a sha256 digest",
    "store": "the metadata store cannot be opened, read or written",
    "store_format": "the metadata store was written in another store format version",
}

_DEFAULT_CODE = "failed"
#: Detail names that would shadow what every InfaasError already has.
_RESERVED_DETAILS = frozenset({"code", "reason", "details", "args"})


class InfaasError(Exception):
    """A failure the user can act on; its message says how. `code` is a protocol error code.

    Keyword details (e.g. ``best_latency_ms=3.1``) become attributes and travel as extra fields
    of the wire error. A subclass names its code as a class attribute, checked when it is defined.
    """

    code: ClassVar[str] = _DEFAULT_CODE

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code not in ERROR_CODES:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__}.code is {cls.code!r}, which is not an error code "
                            f"of infaas_cli.errors.ERROR_CODES; use one of them or add it there (and to "
                            f"docs/protocol.md)")

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            if code not in ERROR_CODES:
                raise ValueError(f"{code!r} is not an error code of infaas_cli.errors.ERROR_CODES")
            self.code = code  # type: ignore[misc]  # an instance may narrow its class's code
        for name in details:
            if name in _RESERVED_DETAILS or hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__} detail {name!r} would shadow an attribute")
        self.reason = message
        self.details = details
        for name, value in details.items():
            setattr(self, name, value)

    def __reduce__(self):
        # Subclasses have their own __init__ signatures; rebuild from state, not from args.
        return _restore, (type(self), self.args, self.__dict__.copy())


def _restore(cls: type[InfaasError], args: tuple, state: dict[str, Any]) -> InfaasError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ProtocolError(InfaasError):
    """A message that cannot be accepted; carries a stable code and a human reason."""

    code: ClassVar[str] = "bad_request"

    def __init__(self, code: str, reason: str, **details: Any) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"{code!r} is not a protocol error code (ERROR_CODES)")
        super().__init__(reason, code=code, **details)


class StoreError(InfaasError):
    code = "store"


class StoreFormatError(StoreError):
    code = "store_format"


class NotFoundError(InfaasError):
    code = "not_found"


class AlreadyExistsError(InfaasError):
    code = "already_exists"


class InvalidModelError(InfaasError):
    code = "invalid_model"


class InvalidValidationDataError(InfaasError):
    code = "invalid_validation"


class InvalidInputError(InfaasError):
    code = "invalid_input"


class BackendUnavailableError(InfaasError):
    code = "backend_unavailable"


class ArtifactError(InfaasError):
    code = "artifact"


class ConfigError(InfaasError):
    code = "bad_config"


# -- the wire ------------------------------------------------------------------------------------------

#: What a peer is told about a failure that is not an InfaasError (the details stay in the local log).
INTERNAL_REASON = "an unexpected failure; it is logged where it happened"

_WIRE_SCALARS = (str, int, float, bool, bytes)


def wire_error(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """(code, reason, extra fields) of the `error` reply for any exception; never a traceback."""
    if not isinstance(exc, InfaasError):
        return "internal", INTERNAL_REASON, {}
    code = exc.code if exc.code in ERROR_CODES else "internal"
    extra = {name: value for name, value in getattr(exc, "details", {}).items()
             if value is not None and isinstance(value, _WIRE_SCALARS) and name not in ("code", "reason")}
    return code, str(exc), extra


# -- the CLI -------------------------------------------------------------------------------------------

EXIT_USER, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_SLO, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130

#: The exit status of the CLI for each error code (the scheme is in this module's docstring).
EXIT_CODES: dict[str, int] = {
    "not_found": EXIT_USER,
    "unknown_model": EXIT_USER,
    "already_exists": EXIT_USER,
    "invalid_model": EXIT_USER,
    "invalid_validation": EXIT_USER,
    "invalid_input": EXIT_USER,
    "artifact": EXIT_USER,
    "checksum": EXIT_USER,
    "failed": EXIT_USER,
    "bad_request": EXIT_USAGE,
    "bad_config": EXIT_USAGE,
    "unavailable": EXIT_UNAVAILABLE,
    "worker_lost": EXIT_UNAVAILABLE,
    "backend_unavailable": EXIT_UNAVAILABLE,
    "unsupported_version": EXIT_UNAVAILABLE,
    "no_variant": EXIT_SLO,
    "overloaded": EXIT_SLO,
    "malformed": EXIT_INTERNAL,
    "unknown_type": EXIT_INTERNAL,
    "sequence_gap": EXIT_INTERNAL,
    "store": EXIT_INTERNAL,
    "store_format": EXIT_INTERNAL,
    "internal": EXIT_INTERNAL,
}


def exit_code(exc: BaseException) -> int:
    """The CLI's exit status for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    code, _, _ = wire_error(exc)
    return EXIT_CODES.get(code, EXIT_USER)
