"""The error inbox, with the changes parked behind its entries and the conflicts it holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import (
    decode_doc,
    decode_row,
    decode_values,
    encode_doc,
    encode_row,
    encode_values,
    now_iso,
)
from dualwrite.engine.state.records import InboxEntry, ParkedChange
from dualwrite.engine.state.schema import _NO_DETAIL, conflicts, error_inbox, parked
from dualwrite.errors import (
    DualwriteError,
)


class InboxState(StoreBase):
    """The error inbox (a part of :class:`StateStore`)."""

    # -- parked changes (capture) ----------------------------------------------------
    def park_error(self, map_name: str, env: str, source: str, key: Sequence[Any], op: str,
                   kind: str, reason: str, change: dict[str, Any],
                   extra: dict[str, Any]) -> int:
        """Put a change that could not be applied in the inbox and park its key: later
        changes to it wait (see :meth:`park_waiting`). Idempotent for one change."""
        operation = "conflict" if kind == "conflict" else \
            {"I": "create", "U": "update", "D": "delete"}.get(op, op)
        self.add_error(map_name, env, key, operation, reason,
                       {"kind": kind, "source": source, "change": encode_doc(change),
                        "extra": encode_doc(extra)})
        k = encode_values(key)
        with self.engine.begin() as conn:
            entry = conn.execute(sa.select(error_inbox.c.id).where(
                error_inbox.c.map == map_name, error_inbox.c.side == env,
                error_inbox.c.row_key == k, error_inbox.c.operation == operation)).scalar_one()
            self._park(conn, map_name, k, source, change, "blocker", entry)
        return int(entry)

    def park_waiting(self, map_name: str, source: str, key: Sequence[Any],
                     change: dict[str, Any], entry: int | None = None) -> None:
        """Park a change behind inbox entry ``entry`` (the rest of a parked source
        transaction), or else behind the entry that holds its key: the open one, or the latest
        one released and not settled yet."""
        k = encode_values(key)
        with self.engine.begin() as conn:
            if entry is None:
                entry = conn.execute(
                    sa.select(parked.c.error_id).join(error_inbox, error_inbox.c.id ==
                                                      parked.c.error_id)
                    .where(parked.c.map == map_name, parked.c.row_key == k,
                           error_inbox.c.status == "open").limit(1)).scalar()
            if entry is None:
                entry = conn.execute(sa.select(sa.func.max(parked.c.error_id)).where(
                    parked.c.map == map_name, parked.c.row_key == k)).scalar() or 0
            self._park(conn, map_name, k, source, change, "waiting", int(entry))

    @staticmethod
    def _park(conn: sa.Connection, map_name: str, k: str, source: str,
              change: dict[str, Any], role: str, entry: int) -> None:
        seq = int(change["seq"])
        found = conn.execute(sa.select(parked.c.id, parked.c.role).where(
            parked.c.map == map_name, parked.c.source == source, parked.c.seq == seq)).first()
        if found:
            # delivered again (a crash before the target committed): a change that blocks
            # its key keeps blocking it, it does not wait behind itself
            if found.role == "blocker" and role == "waiting":
                return
            conn.execute(sa.update(parked).where(parked.c.id == found.id).values(
                error_id=entry, role=role))
        else:
            conn.execute(sa.insert(parked).values(
                map=map_name, row_key=k, source=source, seq=seq, role=role, error_id=entry,
                change=encode_doc(change), parked_at=now_iso()))

    def drop_parked(self, map_name: str) -> int:
        """Forget the changes parked for a map (it was stopped: its next start syncs it
        again). Their inbox entries stay, for the record."""
        with self.engine.begin() as conn:
            return int(conn.execute(sa.delete(parked).where(parked.c.map == map_name)).rowcount)

    def parked_keys(self) -> set[tuple[str, tuple[Any, ...]]]:
        """(map, canonical key) of every key held by a parked change: behind an open inbox
        entry, or behind one that was retried, discarded or resolved and that the applier has
        not settled yet (a later change must not overtake what it settles)."""
        from dualwrite.model.values import canonical

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(parked.c.map, parked.c.row_key).distinct()).all()
        return {(r.map, tuple(canonical(v) for v in decode_values(r.row_key))) for r in rows}

    def parked_count(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(parked.c.map, sa.func.count())
                                .group_by(parked.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def released_parks(self) -> list[tuple[InboxEntry, list[ParkedChange]]]:
        """Inbox entries that were retried, discarded or resolved and still hold parked
        changes, oldest first, each with its parked changes in parking order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(parked).join(error_inbox, error_inbox.c.id == parked.c.error_id)
                .where(error_inbox.c.status.in_(("retry", "discarded", "resolved")))
                .order_by(parked.c.error_id, parked.c.id)).all()
        out: dict[int, list[ParkedChange]] = {}
        for r in rows:
            out.setdefault(int(r.error_id), []).append(ParkedChange(
                int(r.id), r.map, decode_values(r.row_key), r.source, r.role,
                decode_doc(r.change)))
        return [(self.get_error(entry_id), items) for entry_id, items in out.items()]

    def finish_release(self, error_id: int, parked_ids: Sequence[int] | None = None) -> None:
        """Drop the given parked changes of a released entry (None: all of them): they were
        settled. (Changes parked behind it meanwhile stay, for the next round.) A retried
        entry is then resolved; one that failed again was reopened and keeps its changes."""
        with self.engine.begin() as conn:
            status = conn.execute(sa.select(error_inbox.c.status).where(
                error_inbox.c.id == error_id)).scalar()
            if status == "open":
                return
            if parked_ids is None:
                conn.execute(sa.delete(parked).where(parked.c.error_id == error_id))
            ids = list(parked_ids or ())
            for i in range(0, len(ids), 500):
                conn.execute(sa.delete(parked).where(parked.c.id.in_(ids[i:i + 500])))
            if status == "retry":
                conn.execute(sa.update(error_inbox).where(error_inbox.c.id == error_id)
                             .values(status="resolved", last_at=now_iso()))
                self._forget_closed_entry(conn, error_id)

    def add_conflict(self, map_name: str, key: Sequence[Any], policy: str, winner: str,
                     source: str, incoming: dict[str, Any], target: dict[str, Any] | None,
                     theirs: Sequence[dict[str, Any]] = (), *, keep: bool = False) -> None:
        """Record a conflict: the ``incoming`` change from ``source``, the target's row and
        its own changes it met (``theirs``), and who won; once per incoming change. Its row
        values are kept only while it is open, that is for a manual one (``winner``
        "manual") until its inbox entry closes (:meth:`_forget_conflict_values`), unless
        ``keep`` (``capture.keep_conflict_values``: an operator's audit trail); one a policy
        settled keeps none."""
        detail = {"incoming": incoming, "target": target, "theirs": list(theirs)} \
            if winner == "manual" or keep else {}
        with self.engine.begin() as conn:
            seq = incoming.get("seq")
            if seq is not None and conn.execute(sa.select(conflicts.c.id).where(
                    conflicts.c.map == map_name, conflicts.c.source == source,
                    conflicts.c.seq == int(seq),
                    conflicts.c.row_key == encode_values(key))).first() is not None:
                return
            conn.execute(sa.insert(conflicts).values(
                at=now_iso(), map=map_name, row_key=encode_values(key), policy=policy,
                winner=winner, source=source, seq=seq, kept=keep or None,
                detail=encode_doc(detail)))

    @staticmethod
    def _forget_conflict_values(conn: sa.Connection, map_name: str, row_key: str) -> None:
        """Drop the row values of a key's conflicts once no conflict inbox entry of it is
        open: the store keeps business data only for open entries (and those an operator
        asked to keep)."""
        still_open = conn.execute(sa.select(error_inbox.c.id).where(
            error_inbox.c.map == map_name, error_inbox.c.row_key == row_key,
            error_inbox.c.operation == "conflict", error_inbox.c.status == "open")
            .limit(1)).first()
        if still_open is None:
            conn.execute(sa.update(conflicts).where(
                conflicts.c.map == map_name, conflicts.c.row_key == row_key,
                conflicts.c.detail != _NO_DETAIL, conflicts.c.kept.is_not(True))
                .values(detail=_NO_DETAIL))

    def _forget_closed_entry(self, conn: sa.Connection, error_id: int) -> None:
        row = conn.execute(sa.select(error_inbox.c.map, error_inbox.c.row_key,
                                     error_inbox.c.operation, error_inbox.c.status).where(
            error_inbox.c.id == error_id)).first()
        if row is not None and row.operation == "conflict" and \
                row.status in ("resolved", "discarded"):
            self._forget_conflict_values(conn, row.map, row.row_key)

    def conflicts(self, map_name: str | None = None, limit: int = 1000, *,
                  conflict_id: int | None = None) -> list[dict[str, Any]]:
        """The latest conflicts, newest first; an open one also with its row values
        (``incoming``, ``target``, ``theirs``)."""
        stmt = sa.select(conflicts).order_by(conflicts.c.id.desc()).limit(limit)
        if map_name:
            stmt = stmt.where(conflicts.c.map == map_name)
        if conflict_id is not None:
            stmt = stmt.where(conflicts.c.id == conflict_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"id": r.id, "at": r.at, "map": r.map, "key": list(decode_values(r.row_key)),
                 "policy": r.policy, "winner": r.winner, "source": r.source,
                 **decode_doc(r.detail)} for r in rows]

    def conflict_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conflicts.c.map, sa.func.count())
                                .group_by(conflicts.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    # -- error inbox -----------------------------------------------------------------
    def add_error(self, map_name: str, side: str, key: Sequence[Any], operation: str,
                  reason: str, payload: dict[str, Any] | None = None) -> None:
        """Record a failed row; a repeat of the same (map, side, key, operation) bumps
        ``attempts`` and ``last_at`` instead of adding a duplicate. Processes failing one
        row at once (JetStream workers) make one entry and count every attempt: the count is
        added in the UPDATE itself, and the INSERT that met another's is a repeat."""
        k = encode_values(key)
        now = now_iso()
        body = encode_row(payload) if payload is not None else None
        with self.engine.begin() as conn:
            repeat = sa.update(error_inbox).where(
                error_inbox.c.map == map_name, error_inbox.c.side == side,
                error_inbox.c.row_key == k, error_inbox.c.operation == operation).values(
                attempts=error_inbox.c.attempts + 1, last_at=now, reason=reason, payload=body,
                status="open")
            if conn.execute(repeat).rowcount:
                return
            try:
                with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                    conn.execute(sa.insert(error_inbox).values(
                        map=map_name, side=side, row_key=k, operation=operation,
                        reason=reason, payload=body, attempts=1, first_at=now, last_at=now,
                        status="open"))
            except sa.exc.IntegrityError:  # added by another process meanwhile
                conn.execute(repeat)

    def errors(self, map_name: str | None = None, status: str | None = "open", *,
               error_id: int | None = None) -> list[InboxEntry]:
        stmt = sa.select(error_inbox).order_by(error_inbox.c.id)
        if error_id is not None:
            stmt = stmt.where(error_inbox.c.id == error_id)
        if map_name:
            stmt = stmt.where(error_inbox.c.map == map_name)
        if status:
            stmt = stmt.where(error_inbox.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [InboxEntry(r.id, r.map, r.side, decode_values(r.row_key), r.operation, r.reason,
                           decode_row(r.payload) if r.payload else None, r.attempts, r.first_at,
                           r.last_at, r.status) for r in rows]

    def get_error(self, error_id: int) -> InboxEntry:
        for e in self.errors(status=None, error_id=error_id):
            return e
        raise DualwriteError(f"no error with id {error_id} in the inbox",
                             hint="list them with `dualwrite errors list`")

    def resolve_error(self, error_id: int, status: str, *, pick: str | None = None) -> None:
        """Set an entry's status (``retry``, ``discarded``, ``resolved``); ``pick`` records the
        side a conflict was resolved for (the applier settles the entry with it)."""
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"status": status, "last_at": now_iso()}
            if pick is not None:
                body = conn.execute(sa.select(error_inbox.c.payload).where(
                    error_inbox.c.id == error_id)).scalar()
                payload = decode_row(body) if body else {}
                payload["pick"] = pick
                values["payload"] = encode_row(payload)
            conn.execute(sa.update(error_inbox).where(error_inbox.c.id == error_id)
                         .values(**values))
            self._forget_closed_entry(conn, error_id)

    def clear_errors(self, map_name: str, side: str, key: Sequence[Any]) -> None:
        """A row that now syncs cleanly closes its open inbox entries."""
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(error_inbox).where(
                error_inbox.c.map == map_name, error_inbox.c.side == side,
                error_inbox.c.row_key == encode_values(key),
                error_inbox.c.status == "open").values(status="resolved", last_at=now_iso()))
            if n.rowcount:
                self._forget_conflict_values(conn, map_name, encode_values(key))
