"""The one error type of infaas: every domain failure is an InfaasError with an actionable message."""


class InfaasError(Exception):
    """A failure the user can fix; its message says how. The CLI prints it on one line, exit 1."""

    code = "error"


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
