"""The connector seam: one small interface that every backend implements.

A connector is one environment's database. It describes tables, reads rows in the canonical
key order, resolves lookups in batches, and writes batches inside a transaction; what a
backend can do beyond that it declares in :class:`Capabilities` (two-phase commit, capture,
bulk formats, ...), and the engine asks those, never the connector's class. Each backend's
module imports its driver, and :func:`dualwrite.connectors.connect` imports only the module
of the backend asked for; driver errors are translated to
:class:`dualwrite.errors.ConnectorError` at each module's choke point.

A new backend is one module here, a scheme in ``connect``, and an entry in
:data:`dualwrite.testing.backends.REGISTRY`, which runs it through the compliance suite and
every test whose needs it meets.

Canonical key order is the order of the key tuples under :func:`dualwrite.model.values.canonical`:
numbers by value, strings by code point (binary collation). Both sides of a map must stream in
this same order for the initial-sync merge to work, whatever each database's own collation is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dualwrite.model.filters import Expr
from dualwrite.model.schema import TableSchema

if TYPE_CHECKING:
    from dualwrite.connectors.changelog import ChangeLog
    from dualwrite.connectors.delta import DeltaJournal
    from dualwrite.model.conversion import Plan

Row = tuple[Any, ...]


@dataclass(frozen=True)
class JsonValue:
    """How the target database computes one written column from a captured version (a JSON
    object, see :meth:`WriteSession.insert_json`), where it is more than a copy of a member:

    * ``constant``: ``value`` (a map's default), converted to the column's type;
    * ``mapped``: member ``source`` (as text) looked up in mapping ``mapping`` (pairs of
      (text, value), given with the call): a value map, or ids resolved beforehand;
    * ``lookup``: the ``returning`` column of the row of ``table`` whose ``match`` column
      equals member ``source`` (read in ``match``'s type; of several, the smallest
      ``returning``, as :meth:`Connector.lookup` picks).

    A version whose member is not NULL but finds no mapping or no row is not written: the
    caller gets the keys written and takes the others another way."""

    how: str  # "constant", "mapped" or "lookup"
    source: str = ""
    value: Any = None
    mapping: int = 0
    table: str = ""
    match: str = ""
    returning: str = ""


#: a written column's source in a captured version: a member copied as it is, or computed
JsonSource = str | JsonValue


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; tests and the engine switch on these, never on the name
    (tests: :func:`dualwrite.testing.backends.backends` and ``pairs``)."""

    #: :meth:`Connector.begin_branch`: two-phase commit, so that live sync can pair it with
    #: a database of another kind
    two_phase: bool = False
    #: :meth:`Connector.attached_transaction`: one transaction over two of its databases
    attach: bool = False
    #: triggers into a change log (see dualwrite.connectors.capture)
    capture: bool = False
    #: maps on it can run live (``maps start``, ``run``); False: initial sync, plan and
    #: verify only (an OData environment, until changes are read from it)
    live: bool = True
    #: bulk formats :meth:`Connector.bulk_export` writes and :meth:`Connector.bulk_load`
    #: reads (see :data:`BULK_FORMATS`); initial sync streams rows between two connectors
    #: that share one, never decoding them in Python
    bulk_export: frozenset[str] = frozenset()
    bulk_import: frozenset[str] = frozenset()
    #: a bulk load refuses (rolls back) every value the database would store otherwise than
    #: its text says (a rounded decimal, a clipped number): values that the row builders
    #: would only refuse may then go by the bulk path
    bulk_load_checks: bool = False
    #: :meth:`WriteSession.insert_resolving` finds simple lookups inside the INSERT
    insert_resolving: bool = False
    #: the change log's versions are JSON text that a target's own input functions read back
    #: to the values the row builders would write (numbers exact, dates as ISO text): the
    #: applier may hand them to a target that ``supports_json_apply`` undecoded
    supports_json_log: bool = False
    #: :meth:`WriteSession.insert_json` and :meth:`WriteSession.update_if_json` read captured
    #: versions (the applier's set-based path)
    supports_json_apply: bool = False
    #: :meth:`Branch.commit_deciding` and the decision table (:meth:`Connector.decisions`,
    #: :meth:`Connector.settle_decision`, :meth:`Connector.forget_decisions`): the branch
    #: can be live sync's *last resource*, committed in one phase with the transaction's
    #: commit decision written inside it
    last_resource: bool = False


#: The bulk formats, in order of preference. ``copy-text``: PostgreSQL's COPY text format
#: (tab-separated, ``\N`` for NULL, backslash escapes). ``copy-text-portable``: the same
#: without the escapes that only PostgreSQL reads (``\f``, ``\v``): what MariaDB's
#: ``LOAD DATA`` reads as PostgreSQL wrote it. An exporter leaves out of the stream every
#: row it cannot write in the format (they come back from :meth:`Connector.bulk_misses`).
BULK_FORMATS = ("copy-text", "copy-text-portable")


@dataclass(frozen=True)
class BulkField:
    """One column of a bulk export, in the order of the target columns it is loaded into.

    Exactly one of: ``column`` alone, copied as the source database writes its text;
    ``column`` with ``pairs`` (source value -> the value written), where a row whose
    non-null value is in none of the pairs is left out of the export (it is a miss, see
    :meth:`Connector.bulk_misses`) and NULL stays NULL; ``column`` None, the ``constant``
    for every row. Pair keys are of the source column's kind and are matched by the
    database's equality; values and constants are ``str``, ``int``, ``Decimal``, ``bool``
    or None."""

    column: str | None = None
    pairs: tuple[tuple[Any, Any], ...] | None = None
    constant: Any = None


@dataclass(frozen=True)
class LinkRecord:
    """The link an environment belongs to, as recorded in the environment itself."""

    link_id: str
    link_name: str
    environment: str
    created_at: str


@dataclass(frozen=True)
class FoldedLookup:
    """A lookup :meth:`WriteSession.insert_resolving` resolves inside its INSERT: slot
    ``slot`` of the row gets ``returning`` of the row of ``table`` whose ``match`` column
    equals ``value``."""

    slot: int
    table: str
    match: str
    returning: str
    value: Any


class WriteSession(ABC):
    """Writes inside one open transaction of one connector. Commit happens when the
    ``Connector.transaction()`` block exits without an exception; otherwise everything
    written in the block is rolled back."""

    @abstractmethod
    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """Insert rows (tuples in ``columns`` order). Raises ConstraintViolation on a bad row."""

    def insert_returning(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        """Insert one row and return it as stored (defaults filled in). The default reads it
        back by its given primary key; SQL backends use INSERT ... RETURNING."""
        self.insert(table, list(values), [tuple(values.values())])
        return dict(values)

    @abstractmethod
    def update(self, table: str, key: Sequence[str], columns: Sequence[str],
               rows: Sequence[tuple[Row, Row]]) -> int:
        """For each (key values, new values) set ``columns`` on the row found by ``key``.
        Returns how many rows were changed."""

    @abstractmethod
    def delete(self, table: str, key: Sequence[str], keys: Sequence[Row]) -> int:
        """Delete the rows found by ``key``; returns how many were deleted."""

    @abstractmethod
    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        """Rows by key, as this transaction sees them (its own writes included)."""

    @abstractmethod
    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        """As :meth:`Connector.lookup`, inside this transaction."""

    def insert_resolving(self, table: str, columns: Sequence[str], row: Row,
                         lookups: Sequence[FoldedLookup]) -> bool | None:
        """Insert one row whose ``lookups`` slots hold ids still to be found, finding them in
        the same statement (one round trip instead of a lookup and an insert). Each slot gets
        the ``returning`` value of the row of ``lookup.table`` whose ``match`` equals
        ``lookup.value`` (the smallest ``returning`` where several match, as
        :meth:`lookup`), as this transaction sees the table. Returns True when the row was
        inserted, False when some lookup found no row (then nothing was written), None where
        the backend has no such statement (nothing was written; callers look up and insert
        themselves). Raises ConstraintViolation as :meth:`insert`."""
        return None

    def lock(self, table: str, columns: Sequence[str], *, key: Sequence[str],
             keys: Sequence[Row]) -> list[Row]:
        """As :meth:`fetch`, and lock the rows found until the transaction ends, so that no
        other writer changes them between this read and this transaction's writes."""
        return self.fetch(table, columns, key=key, keys=keys)

    def update_if(self, table: str, key: Sequence[str], columns: Sequence[str],
                  rows: Sequence[tuple[Row, Row, Row]]) -> set[Row] | None:
        """For each (key, new values, expected values): set ``columns`` to the new values on
        the row found by ``key`` only if it still holds the expected values, in one statement.
        Returns the keys of the rows updated, or None where the backend has no such statement
        (callers then lock, compare and update themselves)."""
        return None

    def update_if_json(self, table: str, key: Sequence[str], columns: Sequence[str],
                       key_sources: Sequence[str], sources: Sequence[JsonSource],
                       new: Sequence[str], old: Sequence[str], *,
                       mappings: Sequence[Sequence[tuple[str, Any]]] = ()) -> set[Row] | None:
        """:meth:`update_if` with the values still as JSON text, as a capture log holds them:
        ``new[i]``/``old[i]`` are JSON objects whose member ``sources[j]`` is the value of
        ``columns[j]``, converted by the database to the column's type (or computed as a
        :class:`JsonValue` says, ``mappings`` holding the pairs it names); the key of row
        ``i`` is read from ``new[i]`` the same way (member ``key_sources[j]`` for ``key[j]``).
        Returns the keys of the rows updated, or None where the backend cannot read JSON
        this way."""
        return None

    def insert_json(self, table: str, key: Sequence[str], columns: Sequence[str],
                    sources: Sequence[JsonSource], rows: Sequence[str], *,
                    mappings: Sequence[Sequence[tuple[str, Any]]] = ()) -> set[Row] | None:
        """Insert one row per JSON object of ``rows`` (member ``sources[j]`` into
        ``columns[j]``, converted by the database, or computed as a :class:`JsonValue`
        says); returns the keys (columns ``key``, among ``columns``) of the rows inserted:
        all but those a :class:`JsonValue` could not compute. None, having written nothing,
        where the backend cannot read JSON this way."""
        return None

    def capture_own_writes(self) -> None:  # noqa: B027 - backends without capture: nothing
        """Let change capture record this transaction's writes on this side from now on
        (dualwrite's own writes are normally invisible to capture: no echo). Used when a
        write through dualwrite must queue, because its map is not running yet."""


class Branch(ABC):
    """One environment's part of a live (two-phase) transaction.

    Writes go through ``session``. ``prepare()`` makes the branch durable without committing
    it (``PREPARE TRANSACTION`` / ``XA PREPARE``); ``commit()`` then commits it, and
    ``rollback()`` undoes it from any state. A prepared branch survives the death of the
    process that prepared it: :meth:`Connector.recover` finds it and
    :meth:`Connector.finish_prepared` ends it.
    """

    xid: str
    session: WriteSession

    @abstractmethod
    def prepare(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    # A coordinator with two branches overlaps their round trips: it starts a step on one
    # branch, runs the step on the other, then finishes the first. A branch that can send a
    # statement without waiting for its answer overrides these; ``finish_*`` raises what the
    # step raised. After ``start_*``, ``finish_*`` or ``rollback`` must follow.
    def start_prepare(self) -> None:
        self.prepare()

    def finish_prepare(self) -> None:  # noqa: B027 - nothing in flight by default
        pass

    def start_commit(self) -> None:
        self.commit()

    def finish_commit(self) -> None:  # noqa: B027 - nothing in flight by default
        pass

    def release(self) -> None:  # noqa: B027 - nothing held by default
        """Let go of a prepared branch without ending it: it stays prepared in the database,
        for :meth:`Connector.finish_prepared` to end by its xid (a coordinator that cannot
        decide yet). What it held (a connection) is discarded, never reused."""

    def touched(self) -> bool:
        """False only where no statement at all ran in the branch (nothing to commit)."""
        return True

    def commit_deciding(self, transaction: str, record: str) -> None:
        """Commit this (unprepared) branch in one phase, with the row ``(transaction,
        'commit', record)`` inserted into its database's decision table inside it: the
        commit of the branch *is* the commit decision of ``transaction`` (the last-resource
        commit, see :class:`dualwrite.engine.live.Coordinator`). Only where
        ``capabilities.last_resource``; the table exists (:meth:`Connector.ensure_decisions`).

        Raises when the commit did not happen *or when it cannot be told whether it did*
        (the connection was lost with the COMMIT under way): the caller finds out with
        :meth:`Connector.settle_decision`, never by assuming."""
        from dualwrite.errors import TerminalConnectorError

        raise TerminalConnectorError(f"{type(self).__name__} cannot commit as the last "
                                     "resource", hint="use prepare and commit")


class Connector(ABC):
    """One environment's database."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url

    def reads_log_text(self, plan: Plan) -> bool:
        """Whether :meth:`WriteSession.insert_json` and :meth:`WriteSession.update_if_json`
        may copy a member of a captured version (its JSON text, from a source that
        ``supports_json_log``) into a column of ``plan.target``: they then write exactly
        what the row builders would for the value ``plan.source`` held, and leave out (do
        not write) every row whose value the row builders would refuse, so that it takes the
        row path. Default: ``plan.text_safe`` (the database's own input function reads the
        text as the row builders convert the value). A backend that converts or guards more
        in its statement (MariaDB: a zone offset put in UTC, a special value left out) says
        so here."""
        return plan.text_safe

    # -- schema ---------------------------------------------------------------------------
    @abstractmethod
    def tables(self) -> list[str]:
        """Names of the tables in this environment (dualwrite's own tables excluded)."""

    def schema_tables(self, schema: str) -> list[str]:
        """The tables of ``schema``, another schema than the environment's own, named
        ``schema.table`` (for maps naming ``fin.currency``). Raises ConnectorError where the
        schema does not exist; none where the backend has no schemas (the default)."""
        return []

    @abstractmethod
    def describe(self, table: str) -> TableSchema:
        """Columns, kinds, keys and foreign keys of ``table``.
        Raises TerminalConnectorError when the table does not exist."""

    # -- reads ----------------------------------------------------------------------------
    @abstractmethod
    def read(
        self,
        table: str,
        columns: Sequence[str],
        *,
        key: Sequence[str],
        where: Expr | None = None,
        after: Row | None = None,
        batch_size: int = 5000,
    ) -> Iterator[list[Row]]:
        """Rows of ``table`` as tuples in ``columns`` order, in canonical ``key`` order, in
        batches of at most ``batch_size``. Rows with a NULL key column are skipped. ``after``
        restarts strictly after that key. Memory is bounded by the batch size."""

    @abstractmethod
    def query(self, table: str, columns: Sequence[str], *, where: Expr | None = None,
              order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None,
              offset: int = 0) -> list[Row]:
        """A page of rows for an API: filtered, ordered by (column, descending) pairs, sliced.
        Filters are compiled to bound parameters, never pasted into SQL."""

    def count(self, table: str, *, where: Expr | None = None) -> int:
        """How many rows of ``table`` match ``where`` (for progress bars and plans)."""
        key = list(self.describe(table).primary_key)
        return sum(len(b) for b in self.read(table, key, key=key, where=where))

    @abstractmethod
    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        """The rows whose key is in ``keys`` (any order)."""

    @abstractmethod
    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        """Resolve values of column ``match`` to the ``returning`` column of the row that has
        it, in batches. Keys of the result are ``canonical(value)``; unknown values are
        absent. Where several rows match, the first in ``returning`` order wins."""

    # -- bulk -----------------------------------------------------------------------------
    # Initial sync's bulk path (dualwrite.engine.bulk). Only where ``capabilities`` names a
    # format; the defaults refuse.
    def bulk_boundary(self, table: str, key: Sequence[str], *, where: Expr | None,
                      after: Row | None, limit: int) -> Row | None:
        """The key of the ``limit``-th row after ``after`` in :meth:`read` order (rows
        inside ``where``, null keys left out), or None when fewer rows follow."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk path")

    def has_rows(self, table: str, key: Sequence[str], *, after: Row | None,
                 upto: Row | None) -> bool:
        """Whether ``table`` holds any row whose key is after ``after`` and at most ``upto``
        (None: no bound) in :meth:`read` order, whatever a filter says."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk path")

    def bulk_export(self, table: str, fields: Sequence[BulkField], *, key: Sequence[str],
                    where: Expr | None, after: Row | None, upto: Row | None,
                    fmt: str) -> AbstractContextManager[Iterator[bytes]]:
        """The rows of the range (after, upto] inside ``where``, each built from ``fields``,
        as blocks of ``fmt`` (any order); rows that cannot be written exactly are left out
        (:meth:`bulk_misses` returns them)."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk path")

    def bulk_misses(self, table: str, columns: Sequence[str], fields: Sequence[BulkField], *,
                    key: Sequence[str], where: Expr | None, after: Row | None,
                    upto: Row | None, fmt: str) -> list[Row]:
        """The rows of the range that :meth:`bulk_export` leaves out, as :meth:`read` gives
        them (``columns``), in key order."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk path")

    def bulk_load(self, table: str, columns: Sequence[str], blocks: Iterable[bytes], *,
                  fmt: str) -> int:
        """Load ``blocks`` of ``fmt`` into ``columns`` in one transaction of dualwrite's own
        (not captured): every row or none (a rejected row raises ConstraintViolation).
        Returns the number of rows loaded."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk path")

    # -- writes ---------------------------------------------------------------------------
    @abstractmethod
    def transaction(self) -> AbstractContextManager[WriteSession]:
        """A write transaction: committed when the block ends, rolled back on an exception."""

    # -- two-phase commit -------------------------------------------------------------------
    def attached_transaction(self, other: Connector
                             ) -> AbstractContextManager[tuple[WriteSession, WriteSession]]:
        """Where both connectors have ``capabilities.attach``: one transaction over this
        database and ``other``'s, committed by one COMMIT (this side's session, the other's).
        The default refuses."""
        from dualwrite.errors import ConfigError

        raise ConfigError(f"{type(self).__name__} cannot attach another database",
                          hint="pair environments that support two-phase commit",
                          code="DW204")

    def begin_branch(self, xid: str) -> Branch:
        """Open a two-phase branch named ``xid``. Only where ``capabilities.two_phase``."""
        from dualwrite.errors import TerminalConnectorError

        raise TerminalConnectorError(
            f"{type(self).__name__} has no two-phase commit", environment=self.name,
            hint="pair environments whose databases support it (PostgreSQL, MariaDB), or two "
            "SQLite files")

    def recover(self, prefix: str) -> list[str]:
        """Prepared branches whose xid starts with ``prefix`` (none where there is no 2PC)."""
        return []

    def finish_prepared(self, xid: str, *, commit: bool) -> None:  # noqa: B027 - no-op default
        """Commit or roll back a prepared branch left by any process (backends without
        two-phase commit never have one)."""

    # -- the decision table of a last-resource commit (capabilities.last_resource) -----------
    def ensure_decisions(self) -> None:
        """Create the decision table where it is missing (idempotent; safe against another
        process doing it at the same moment). Never inside a branch: DDL commits MariaDB's
        transaction."""
        from dualwrite.errors import TerminalConnectorError

        raise TerminalConnectorError(f"{type(self).__name__} keeps no decision table",
                                     environment=self.name, hint="pair it with two-phase "
                                     "commit instead")

    def decisions(self, prefix: str) -> list[tuple[str, str, str | None]]:
        """The decision rows whose transaction starts with ``prefix``: (transaction,
        ``"commit"`` or ``"abort"``, record of a commit). None where there is no table."""
        return []

    def settle_decision(self, transaction: str) -> tuple[str, str | None]:
        """Decide ``transaction`` for good, from any process: where its row is there (its
        last resource committed), ``("commit", record)``; where it is not, an ``"abort"``
        row is inserted first, so that a commit still on its way (a coordinator's COMMIT the
        server has not finished) can never land after this answer (its insert then fails on
        the key), and ``("abort", None)`` is returned. An uncommitted row of a commit under
        way makes this wait for it (the key's lock)."""
        from dualwrite.errors import TerminalConnectorError

        raise TerminalConnectorError(f"{type(self).__name__} keeps no decision table",
                                     environment=self.name, hint="pair it with two-phase "
                                     "commit instead")

    def forget_decisions(self, transactions: Sequence[str]) -> None:  # noqa: B027
        """Delete the commit rows of ``transactions`` (their decisions and audit rows are
        in the state store now); abort rows stay a while (see the SQL connector)."""

    # -- change capture -------------------------------------------------------------------
    def change_method(self, table: str, modified: str | None) -> tuple[str | None, str] | None:
        """How the changes of ``table`` would be read where they are not captured in the
        database itself: (method, why), or (None, why not) when they cannot be; None
        where this question does not arise (capture by triggers, or none at all). May ask
        the environment (an OData service is probed)."""
        return None

    def change_log(self) -> ChangeLog:
        """This environment's change log (see :mod:`dualwrite.connectors.changelog`; the SQL
        databases' is :class:`dualwrite.connectors.capture.CaptureLog`). Only where
        ``capabilities.capture``; raises TerminalConnectorError elsewhere."""
        from dualwrite.errors import TerminalConnectorError

        raise TerminalConnectorError(
            f"{type(self).__name__} has no change capture", environment=self.name,
            hint="capture needs PostgreSQL, MariaDB or SQLite")

    def delta_journal(self) -> DeltaJournal | None:
        """This environment's delta journal (change tracking for the OData service's delta
        links, :mod:`dualwrite.connectors.delta`), or None where it keeps none: only a SQL
        database with capture keeps one."""
        return None

    # -- errors ---------------------------------------------------------------------------
    def translating(self, doing: str) -> AbstractContextManager[None]:
        """A context in which the backend's own errors become the :class:`ConnectorError` of
        the one error tree, naming ``doing`` (each backend's single translation choke point,
        kept on purpose: the engine wraps its statements in it and handles one hierarchy).
        The default translates nothing: a backend whose code raises ConnectorErrors itself."""
        return nullcontext()

    # -- link bookkeeping -----------------------------------------------------------------
    @abstractmethod
    def get_link(self) -> LinkRecord | None:
        """The link recorded in this environment, if any."""

    @abstractmethod
    def set_link(self, record: LinkRecord) -> None:
        """Record the link. Callers check ``get_link()`` first; this overwrites. Where another
        process records this environment at the same moment, either record may stand:
        callers read it back (``get_link()``) to see whose did."""

    @abstractmethod
    def clear_link(self) -> None:
        """Remove the link record."""

    def link_storage(self) -> list[str]:
        """What keeps the link record in the environment, as ``uninstall`` lists it
        (``table dualwrite_link``), where it is there; none by default."""
        return []

    def drop_link_storage(self) -> None:  # noqa: B027 - nothing kept apart by default
        """Remove what keeps the link record (see :meth:`link_storage`). Callers make sure
        it holds no other link's record first."""

    def forget_schema(self) -> None:  # noqa: B027 - a backend without caches has nothing
        """Drop what was learnt of the tables (their schemas, prepared statements): the next
        use describes them again. Called after their schema may have changed."""

    def close(self) -> None:  # noqa: B027 - optional hook; most connectors have a pool to drop
        """Release connections. Idempotent."""

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
