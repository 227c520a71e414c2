"""Live sync on a link whose one side is an OData service: the service as the *last
resource* of the commit.

A service takes no part in two-phase commit, but it applies a ``$batch`` change set whole or
not at all, and answers whether it did. So :class:`LastResourceCoordinator` writes the
database branch, prepares it, records the transaction as *in doubt* in the state store
(what the change set holds, and what each row it writes will be once applied), sends the
change set, then commits the database branch if the service applied it and rolls it back if
it did not. The service's answer decides the transaction; the in-doubt record is what
decides it when that answer is lost:

* the service answered: applied (decision logged, branch committed, record removed), or
  refused (record removed, branch rolled back, the request refused named in a RowError);
* it was never sent (the connection could not be made): as refused;
* sent, and no answer (a timeout, a dropped connection, a 5xx a gateway gave, a garbled
  answer): the rows are read back by key. All as the change set makes them: it was applied
  (commit); one not: it was not (roll back). If the service cannot be read either, the
  branch stays prepared and the record stays, marked abandoned; :func:`resolve_in_doubt`
  (run by ``dualwrite recover``, and before the first live transaction of every process)
  reads the rows back later and ends the branch the same way.

A coordinator that dies leaves its record: if it died before sending, reading back finds
nothing applied and the branch is rolled back; after, the rows decide. A branch prepared
with no record (death before it was written) has no decision: rolled back (presumed abort)
by :func:`dualwrite.engine.live.recover`, as the change set was never sent.

What reading back cannot tell: another writer changing the same rows of the service
between the send and the read (its values are taken for, or against, the change set's), and
a service that applies a change set *after* it was read back as not applied (a request
still queued in the service when the client gave up). docs/live-sync.md says so.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.base import Branch
from dualwrite.connectors.odata.connector import (
    ODataConnector,
    ODataWriteSession,
    OutcomeUnknown,
    dumps,
    loads,
)
from dualwrite.engine.live import (
    LiveTransaction,
    RecoveryAction,
    StepHook,
    branch_xid,
    coordinator_alive,
    new_xid,
    xid_prefix,
)
from dualwrite.engine.security import Principal
from dualwrite.engine.state import AuditEntry, StateStore
from dualwrite.engine.state.codec import decode_values, encode_values
from dualwrite.errors import (
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    InDoubt,
    RowError,
    TransientConnectorError,
)
from dualwrite.model.maps import Side

if TYPE_CHECKING:
    from dualwrite.connectors.base import Connector
    from dualwrite.engine.link import Link

log = logging.getLogger(__name__)

#: the state store's checkpoint phase under which in-doubt transactions are kept (by xid)
IN_DOUBT = "odata-in-doubt"
#: the steps of the protocol a test hook sees
LAST_RESOURCE_STEPS = ("after_prepare", "after_record", "after_send", "after_decision")


def odata_side(connectors: dict[Side, Connector]) -> Side | None:
    """The side of a link that is an OData service, if one is."""
    for s in Side:
        if isinstance(connectors[s], ODataConnector):
            return s
    return None


class LastResourceCoordinator:
    """Runs one live transaction of a link with one OData side (the interface of
    :class:`~dualwrite.engine.live.Coordinator`: ``tx``, ``commit()``, ``abort()``)."""

    def __init__(self, link: Link, principal: str | Principal,
                 hook: StepHook | None = None) -> None:
        side = odata_side(link.connectors)
        assert side is not None
        self.link = link
        self.odata, self.db = side, side.other
        self.principal = principal.name if isinstance(principal, Principal) else principal
        self.hook = hook or (lambda step: None)
        dbc = link.connectors[self.db]
        self.service: ODataConnector = link.connectors[self.odata]  # type: ignore[assignment]
        if not dbc.capabilities.two_phase:
            raise ConfigError(
                f"environment {dbc.name!r} ({type(dbc).__name__}) cannot prepare a "
                "transaction, so writes through dualwrite to it and the OData service "
                f"{self.service.name!r} could not be atomic",
                hint="live sync with an OData environment needs PostgreSQL or MariaDB on "
                "the other side; sync and follow a SQLite one (`dualwrite follow`)",
                code="DW204")
        self.service.require_change_sets()
        self.xid = new_xid(link.link_id)
        self.branch: Branch = dbc.begin_branch(branch_xid(self.xid, self.db))
        try:
            self.session = ODataWriteSession(self.service)
            # no map lifecycle on such a link (maps are not started): every valid map is live
            running = {b.name for b in link.bound_maps()}
            self.tx = LiveTransaction(link, {self.db: self.branch.session,
                                             self.odata: self.session}, principal, running)
        except BaseException:
            self._rollback()
            raise

    # -- ending --------------------------------------------------------------------------------
    def _rollback(self) -> None:
        # a prepared branch this cannot reach now is ended by recovery (no decision: abort)
        with contextlib.suppress(ConnectorError):
            self.branch.rollback()

    def abort(self) -> None:
        self._rollback()

    def _participants(self) -> list[str]:
        return [self.link.env_name(s) for s in Side]

    def commit(self) -> None:
        """Prepare the database branch, record the transaction in doubt, send the change
        set, and end the branch as the service's answer (or the rows read back) say.
        Raises RowError for a request the service refused, TransientConnectorError when the
        change set was certainly not applied (both sides are then unchanged), InDoubt when
        what became of it cannot be found out now."""
        state = self.link.state
        if not self.tx.audit:
            self._rollback()
            return
        if not self.session.requests:  # nothing for the service (unmapped, filtered out)
            try:
                self.branch.prepare()
            except BaseException:
                self._rollback()
                raise
            self._end(applied=True)
            return
        expected = self.session.expectations()
        if expected is None:
            self._rollback()
            raise ConfigError(
                f"a create in OData service {self.service.name!r} leaves its key to the "
                "service, so a lost answer could not be checked by reading the row back; "
                "nothing was written", hint="map the entity set's key (or an alternate "
                "key) so dualwrite sends it", code="DW204")
        try:
            self.branch.prepare()
            self.hook("after_prepare")
            record = {"status": "sending", "db": self.db.value,
                      "participants": self._participants(), "principal": self.principal,
                      # JSON text of their own: decimals kept exact
                      "expected": dumps(expected), "requests": dumps(self.session.requests),
                      "audit": [[a.environment, a.table, encode_values(a.key), a.operation,
                                 a.map] for a in self.tx.audit]}
            state.put_checkpoint(self.xid, IN_DOUBT, None, record)
        except BaseException:
            self._rollback()
            raise
        self.hook("after_record")
        try:
            self.session.send_as_last_resource()
        except OutcomeUnknown as exc:
            self._resolve_unknown(exc, record, expected)
            return
        except ConnectorError as exc:  # certainly not applied
            self._end(applied=False)
            raise self._refusal(exc) from exc
        self.hook("after_send")
        self._end(applied=True)

    def _resolve_unknown(self, exc: OutcomeUnknown, record: dict[str, Any],
                         expected: list[dict[str, Any]]) -> None:
        self.hook("after_send")
        try:
            applied = self.service.applied(expected)
        except ConnectorError as read:
            record["status"] = "abandoned"
            with contextlib.suppress(Exception):
                self.link.state.put_checkpoint(self.xid, IN_DOUBT, None, record)
            self._release()
            raise InDoubt(
                f"{exc.message}; reading the rows back failed too ({read.message}): the "
                f"transaction {self.xid} is in doubt, the database side "
                f"{self.link.env_name(self.db)!r} prepared (its rows locked) until it is "
                "resolved", environment=self.service.name,
                hint="run `dualwrite recover` once the service answers (every process also "
                "does before its first live transaction): it reads the rows back and "
                "commits or rolls back the database side") from exc
        log.warning("%s: the answer to transaction %s's change set was lost; the rows read "
                    "back say it was %s", self.service.name, self.xid,
                    "applied" if applied else "not applied")
        self._end(applied=applied)
        if not applied:
            raise TransientConnectorError(
                f"{exc.message.removeprefix(f'{self.service.name}: ')}; the rows read back "
                "show it was not applied, and the database side was rolled back: nothing "
                "was written", environment=self.service.name,
                hint="try the transaction again") from exc

    def _release(self) -> None:
        """Let go of the prepared branch's connection without ending it (recovery ends it
        by its xid). Invalidated rather than returned to the pool: a pool's reset must not
        touch what the branch left prepared."""
        self.branch.release()

    def _end(self, *, applied: bool) -> None:
        state = self.link.state
        if not applied:
            state.clear_checkpoint(self.xid, IN_DOUBT)
            self._rollback()
            return
        state.log_commit_decision(self.xid, self._participants(), self.principal,
                                  self.tx.audit)
        state.clear_checkpoint(self.xid, IN_DOUBT)
        self.hook("after_decision")
        # committed from here: a branch that fails to commit now is finished by recovery
        try:
            self.branch.commit()
        except ConnectorError:
            try:
                self.link.connectors[self.db].finish_prepared(
                    branch_xid(self.xid, self.db), commit=True)
            except ConnectorError:
                return  # left for `dualwrite recover` / the next start
        state.complete(self.xid)

    def _refusal(self, exc: ConnectorError) -> ConnectorError | RowError:
        """A refused change set as the error a live transaction raises: a RowError naming
        the map, the side, the entity set and the key of the request refused."""
        if not isinstance(exc, ConstraintViolation):
            return exc
        target = None
        for req, t in zip(self.session.requests, self.session.targets, strict=True):
            if t is not None and _names(req, exc.message):
                target = t
                break
        table, key = (target[0], target[2]) if target else (None, None)
        maps = [b.name for b in self.link.bound_maps()
                if table and b.table(self.odata).casefold() == table.casefold()]
        what = ("the row changed in the OData service since this transaction read it (its "
                "ETag no longer matches)" if exc.kind == "conflict"
                else "the OData service refused the write")
        return RowError(f"{what}: {exc.message}; nothing was written on either side",
                        map=maps[0] if len(maps) == 1 else None,
                        side=self.link.env_name(self.odata), table=table, key=key,
                        hint=exc.hint)


def _names(req: dict[str, Any], message: str) -> bool:
    """Whether a refusal's message names request ``req`` (as ``ODataWriteSession._refused``
    writes it: ``<method> <url>: ...``)."""
    return f"{req['method']} {urllib.parse.unquote(req['url'])}:" in message


def resolve_in_doubt(link_id: str, connectors: dict[Side, Connector], state: StateStore
                     ) -> tuple[list[RecoveryAction], set[str]]:
    """End every transaction of this link left in doubt with an OData service: read its rows
    back; all as the change set makes them: log the commit decision and commit the database
    branch; else roll it back. Returns what was done, and the xids still in doubt (the
    service cannot be read, or their coordinator is still sending): their branches must be
    left prepared."""
    actions: list[RecoveryAction] = []
    waiting: set[str] = set()
    side = odata_side(connectors)
    if side is None:
        return actions, waiting
    prefix = xid_prefix(link_id)
    records = [(x, r) for x, r in state.checkpoints_in_phase(IN_DOUBT) if x.startswith(prefix)]
    service: ODataConnector = connectors[side]  # type: ignore[assignment]
    db = connectors[side.other]
    for xid, record in records:
        if record.get("status") != "abandoned" and coordinator_alive(xid):
            waiting.add(xid)  # its coordinator is still at work on it
            continue
        branch = branch_xid(xid, Side(record["db"]))
        if state.decision(xid) == "commit":  # decided before the record was removed
            state.clear_checkpoint(xid, IN_DOUBT)
            continue
        try:
            applied = service.applied(loads(record["expected"]))
        except ConnectorError as exc:
            log.warning("transaction %s stays in doubt: %s", xid, exc.message)
            waiting.add(xid)
            actions.append(RecoveryAction(branch, db.name, "left in doubt (the OData service "
                                          "could not be read)"))
            continue
        if applied:
            state.log_commit_decision(xid, record.get("participants", []),
                                      record.get("principal", "recover"),
                                      [AuditEntry(e, t, decode_values(k), o, m)
                                       for e, t, k, o, m in record.get("audit", [])])
        state.clear_checkpoint(xid, IN_DOUBT)
        if branch in db.recover(prefix):
            db.finish_prepared(branch, commit=applied)
        if applied:
            state.complete(xid, now=True)
        actions.append(RecoveryAction(branch, db.name, "committed (the service had applied "
                                      "the change set)" if applied else "rolled back (the "
                                      "service had not applied the change set)"))
    return actions, waiting


__all__ = ["IN_DOUBT", "LAST_RESOURCE_STEPS", "LastResourceCoordinator", "odata_side",
           "resolve_in_doubt"]
