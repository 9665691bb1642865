"""The errors DTMS returns to clients, one class per wire code.

Every error that reaches a client is a :class:`DtmsError`: a stable string ``code``, the
HTTP-like ``status`` number, a human sentence, and any structured details (the offending
``field``, ``retry_after`` seconds, the broker's values...). ``to_wire()`` gives the error map
of SPEC section 3::

    >>> InvalidArgument("must be > 0", field="ticket").to_wire()
    {'code': 'INVALID_ARGUMENT', 'status': 400, 'message': 'ticket: must be > 0', 'field': 'ticket'}

Raising one inside an actor's handler answers the asker with it; the actor does not crash.
Anything else raised in a handler is a bug: the asker gets INTERNAL and the actor crashes to
its supervisor.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DtmsError(Exception):
    """Base of all client-facing errors."""

    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "status": self.status, "message": self.message}
        wire.update(self.details)
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> DtmsError:
        """Rebuild the specific error class from an error map (used by the client)."""
        code = str(wire.get("code", "INTERNAL"))
        klass = ERRORS_BY_CODE.get(code, Internal)
        details = {k: v for k, v in wire.items() if k not in ("code", "status", "message")}
        err = klass.__new__(klass)
        DtmsError.__init__(err, str(wire.get("message", code)), **details)
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


class NotReady(DtmsError):
    code = "NOT_READY"
    status = 503

    def __init__(self, message: str = "DTMS is not ready", retry_after: float = 1.0, **details: Any):
        super().__init__(message, retry_after=retry_after, **details)


class InvalidArgument(DtmsError):
    """Bad input. Names every offending field: ``errors`` maps field -> reason."""

    code = "INVALID_ARGUMENT"
    status = 400

    def __init__(self, reason: str, *, field: str, **details: Any) -> None:
        super().__init__(f"{field}: {reason}", field=field, **details)

    @classmethod
    def many(cls, errors: dict[str, str]) -> InvalidArgument:
        """One error naming all invalid fields; ``field`` is the first of them."""
        first = next(iter(errors))
        message = "; ".join(f"{f}: {r}" for f, r in errors.items())
        err = cls(errors[first], field=first, errors=dict(errors))
        err.message = message
        err.args = (message,)
        return err


class Unauthenticated(DtmsError):
    code = "UNAUTHENTICATED"
    status = 401


class NotFound(DtmsError):
    code = "NOT_FOUND"
    status = 404


class Conflict(DtmsError):
    code = "CONFLICT"
    status = 409


class OwnedElsewhere(DtmsError):
    code = "OWNED_ELSEWHERE"
    status = 409


class DtmsPosition(DtmsError):
    """The position is DTMS's own (its magic or its comment tag): a hedge or an order DTMS
    opened for a trade it manages. ``hedge_of`` names that trade when the comment does."""

    code = "DTMS_POSITION"
    status = 409


class Overloaded(DtmsError):
    code = "OVERLOADED"
    status = 429

    def __init__(self, message: str = "DTMS is overloaded", retry_after: float = 0.5, **details: Any):
        super().__init__(message, retry_after=retry_after, **details)


class Internal(DtmsError):
    code = "INTERNAL"
    status = 500


ERRORS_BY_CODE: dict[str, type[DtmsError]] = {
    k.code: k
    for k in (NotReady, InvalidArgument, Unauthenticated, NotFound, Conflict, OwnedElsewhere,
              DtmsPosition, Overloaded, Internal)
}


class BrokerError(Exception):
    """The terminal call failed (a ``None`` result); carries MT5's ``last_error()``."""

    def __init__(self, operation: str, code: int, message: str) -> None:
        super().__init__(f"{operation} failed: ({code}) {message}")
        self.operation = operation
        self.code = code
        self.message = message
