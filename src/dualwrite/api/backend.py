"""The narrow protocol the OData layer codes against, so that it is testable with a fake.

The OData layer (:mod:`dualwrite.api.odata`) never touches a database or a map: it parses
HTTP/OData, calls an :class:`ODataBackend`, and renders the answer. The engine implements the
protocol over the dual-written environments; ``tests/api/fake_backend.py`` implements it in
memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from dualwrite.api.errors import NotFound
from dualwrite.engine.delta import DeltaPage  # the one DeltaPage, re-exported here
from dualwrite.engine.security import Principal  # the one Principal, re-exported here
from dualwrite.model.filters import Expr
from dualwrite.model.schema import TableSchema

__all__ = ["ChangeTracking", "DeltaPage", "ODataBackend", "Principal", "WriteKind", "WriteOp"]

WriteKind = Literal["create", "update", "replace", "delete"]


@dataclass(frozen=True)
class WriteOp:
    """One row write inside a call to :meth:`ODataBackend.apply`.

    * ``create``: ``key`` is None; ``values`` holds the columns given (key columns included
      when the client supplied them; omitted columns take their defaults).
    * ``update``: ``key`` is the primary key (column -> value); ``values`` holds only the
      columns to change (never key columns).
    * ``replace``: like ``update`` but ``values`` holds every non-key column; the ones the
      client omitted are None.
    * ``delete``: ``key`` is the primary key; ``values`` is empty.

    ``ref`` (update, replace, delete) names an earlier op of the same :meth:`ODataBackend.apply`
    call, by index, whose row this op addresses; ``key`` is None then and the backend takes
    the primary key from the row that op returned (:meth:`resolved`). It is how a change set
    addresses a row whose key the database generates when it is created (``$1`` in OData's
    content-ID referencing).

    ``if_match`` is the client's ``If-Match`` header (an ETag list or ``*``), or None. The
    OData layer has already checked it against the row it read before the call; the engine
    may check it again inside its transaction with :func:`dualwrite.api.payload.etag_of`.
    Column names are the backend's own (as in :class:`TableSchema`); values are Python values
    of the column's kind (str, int, Decimal, float, bool, date, datetime, time, bytes, UUID).
    """

    kind: WriteKind
    table: str
    key: dict[str, Any] | None
    values: dict[str, Any] = field(default_factory=dict)
    if_match: str | None = None
    ref: int | None = None

    def resolved(self, earlier: Sequence[dict[str, Any] | None],
                 key_columns: Sequence[str]) -> WriteOp:
        """This op with ``key`` filled in from the row op ``ref`` returned (``earlier`` are
        the rows of the ops applied before this one); itself when it has no ``ref``.
        Raises ``api.errors.NotFound`` when that op returned no row (it deleted it)."""
        if self.ref is None:
            return self
        row = earlier[self.ref] if 0 <= self.ref < len(earlier) else None
        if row is None:
            raise NotFound(f"the entity of {self.table!r} that request {self.ref + 1} of the "
                           "change set wrote does not exist any more", table=self.table)
        return replace(self, key={c: row.get(c) for c in key_columns}, ref=None)


@runtime_checkable
class ODataBackend(Protocol):
    """What the OData layer needs from the engine. Every method may raise a
    :class:`dualwrite.errors.DualwriteError`; the layer maps each to an HTTP status."""

    def environments(self) -> list[str]:
        """Names of the environments served (the ``<env>`` in ``/odata/<env>/``)."""
        ...

    def entity_sets(self, env: str) -> list[TableSchema]:
        """The tables exposed for ``env``. The table name is the entity set name and
        ``TableSchema.primary_key`` is the entity key."""
        ...

    def alternate_keys(self, env: str, table: str) -> list[tuple[str, ...]]:
        """Unique column sets usable as alternate keys, e.g. ``[("accountnumber",)]``."""
        ...

    def model_version(self, env: str) -> tuple[object, ...]:
        """What :meth:`entity_sets` and :meth:`alternate_keys` of ``env`` answer from:
        objects that are replaced, never changed in place, whenever those answers may change
        (maps reloaded, a table described anew). The OData layer keeps its model of ``env``
        while each of them is the same object (compared by identity) and builds the model
        again otherwise. A backend that cannot tell returns a new object every time: the
        model is then built for every request."""
        ...

    def query(self, env: str, table: str, *, columns: Sequence[str] | None, where: Expr | None,
              order_by: Sequence[tuple[str, bool]], limit: int | None,
              offset: int) -> list[dict[str, Any]]:
        """Rows of ``table`` passing ``where`` (an AST whose properties are real column names),
        sorted by ``order_by`` (column, descending), then ``offset``/``limit``. ``columns``
        None means every column."""
        ...

    def count(self, env: str, table: str, *, where: Expr | None) -> int:
        """How many rows of ``table`` pass ``where``."""
        ...

    def get(self, env: str, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row with primary key ``key`` (column -> value), or None."""
        ...

    def apply(self, env: str, principal: Principal,
              ops: Sequence[WriteOp]) -> list[dict[str, Any] | None]:
        """Apply ALL ``ops`` atomically (one dual-written transaction) and return, per op, the
        row as stored after it (None for a delete).

        Raises dualwrite errors, which the layer maps: ``RowError`` and ``ConstraintViolation``
        (400, or 409 for a unique/duplicate violation), ``LicenceError`` (403),
        ``RowNotFound`` or ``api.errors.NotFound`` (404), ``api.errors.PreconditionFailed``
        (412), ``TransientConnectorError`` (503). An error may carry an ``op_index`` attribute (int)
        naming the op at fault, so that a ``$batch`` response can point at that request.
        """
        ...

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, with the token's role and licences, or
        None (401)."""
        ...

    def refused(self, principal: Principal, environment: str | None, request: str,
                needed: str, reason: str) -> None:
        """Audit a request refused with 403 for want of ``needed`` (``"role writer"``)."""
        ...


@runtime_checkable
class ChangeTracking(Protocol):
    """What a backend that honours ``Prefer: odata.track-changes`` adds to
    :class:`ODataBackend`. Positions are opaque text the OData layer wraps in its tokens."""

    def track_changes(self, env: str, table: str, key: Sequence[str]) -> str | None:
        """The position of "now" for ``table`` (whose entity key is ``key``), to be read
        before the entities are: every change committed after this call is told by a delta
        from it. None when ``table`` is not tracked (the service then answers without)."""
        ...

    def changes_since(self, env: str, table: str, key: Sequence[str], position: str,
                      limit: int) -> DeltaPage:
        """At most ``limit`` keys of ``table`` that changed after ``position``, in the order of
        their last change, each with its row as it is now (None: deleted), and the position
        to go on from. Raises :class:`dualwrite.errors.DeltaTokenGone` (410) for a position
        that cannot be resumed from."""
        ...
