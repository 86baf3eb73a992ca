"""The one exception tree of AthenaOS, and its mapping to gRPC status codes.

    AthenaError                      INTERNAL (never shown: the client sees "internal error")
    ├── InvalidArgument              INVALID_ARGUMENT  (names the offending field)
    ├── NotFound                     NOT_FOUND         (also for other users' objects)
    ├── AlreadyExists                ALREADY_EXISTS
    ├── FailedPrecondition           FAILED_PRECONDITION
    ├── Unauthenticated              UNAUTHENTICATED
    ├── PermissionDenied             PERMISSION_DENIED
    ├── ResourceExhausted            RESOURCE_EXHAUSTED (may carry retry_after)
    ├── Unavailable                  UNAVAILABLE
    ├── DeadlineExceeded             DEADLINE_EXCEEDED
    └── Cancelled                    CANCELLED

Domain code raises these (this module imports no gRPC, so domain code stays free of it);
`mesh.interceptors.ErrorInterceptor` turns them into statuses at the server boundary, and
`mesh.clients.from_rpc_error` turns a peer's status back into the same tree at the client boundary.
Anything else is a bug: logged with its traceback and answered INTERNAL with a generic message.
"""

from __future__ import annotations


class AthenaError(Exception):
    """Root of every error a service answers on purpose. Its message is shown to the caller."""

    status: str = "INTERNAL"
    """Name of the gRPC status code this error is answered with."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AthenaError):
    """The request is malformed; `field` names the offending field (dotted path)."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(AthenaError):
    """The object does not exist, or belongs to someone else."""

    status = "NOT_FOUND"


class AlreadyExists(AthenaError):
    """The object exists already."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(AthenaError):
    """The system is not in a state where the request can run (for example DevLogin outside dev)."""

    status = "FAILED_PRECONDITION"


class Unauthenticated(AthenaError):
    """No valid credentials. The message never says which check failed beyond a short reason."""

    status = "UNAUTHENTICATED"


class PermissionDenied(AthenaError):
    """Valid credentials that do not allow this request."""

    status = "PERMISSION_DENIED"


class ResourceExhausted(AthenaError):
    """A rate or size limit was hit; `retry_after` (seconds) says when trying again may succeed."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(AthenaError):
    """A dependency (database, cache, model, peer service) cannot be reached right now; retrying may work."""

    status = "UNAVAILABLE"


class DeadlineExceeded(AthenaError):
    """The caller's deadline passed before the work finished."""

    status = "DEADLINE_EXCEEDED"


class Cancelled(AthenaError):
    """The caller went away."""

    status = "CANCELLED"


class Unimplemented(AthenaError):
    """This process does not serve the method (another one behind the edge does)."""

    status = "UNIMPLEMENTED"


class DataLoss(AthenaError):
    """Stored data that does not open: tampered, or moved from another row or user (`mesh.envelope`)."""

    status = "DATA_LOSS"


STATUS_TYPES: dict[str, type[AthenaError]] = {
    error_type.status: error_type for error_type in AthenaError.__subclasses__()
}
"""Error type per status name, for translating a peer's status back into the tree."""
