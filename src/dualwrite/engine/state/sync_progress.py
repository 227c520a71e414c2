"""Initial sync's progress: checkpoints, and the self-filled one-way fields of the rows it
created."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import decode_values, encode_values, now_iso
from dualwrite.engine.state.schema import checkpoints, created_defaults, sync_creating


class CheckpointsState(StoreBase):
    """Initial sync's progress (a part of :class:`StateStore`)."""

    # -- checkpoints -----------------------------------------------------------------
    def get_checkpoint(self, map_name: str, phase: str) -> tuple[tuple[Any, ...] | None,
                                                                  dict[str, Any]]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase)).first()
        if row is None:
            return None, {}
        pos = decode_values(row.position) if row.position else None
        return pos, json.loads(row.stats)

    def put_checkpoint(self, map_name: str, phase: str, position: Sequence[Any] | None,
                       stats: dict[str, Any]) -> None:
        values = {"position": encode_values(position) if position is not None else None,
                  "stats": json.dumps(stats), "updated_at": now_iso()}
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase).values(**values))
            if n.rowcount == 0:
                conn.execute(sa.insert(checkpoints).values(map=map_name, phase=phase, **values))

    def checkpoints_in_phase(self, phase: str) -> list[tuple[str, dict[str, Any]]]:
        """Every (name, stats) kept under ``phase``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(checkpoints.c.map, checkpoints.c.stats).where(
                checkpoints.c.phase == phase).order_by(checkpoints.c.updated_at)).all()
        return [(str(r.map), json.loads(r.stats)) for r in rows]

    def clear_checkpoint(self, map_name: str, phase: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase))

    # -- one-way fields filled by a created row's own defaults -----------------------
    def note_created_defaults(self, map_name: str, side: str,
                              rows: Sequence[tuple[str, Mapping[str, str | None]]]) -> None:
        """Record, per created row (the digest of its key), the digest of each one-way field
        its side filled itself (None: not read back yet). A repeat replaces the earlier
        record."""
        if not rows:
            return
        records = [{"map": map_name, "side": side, "row_key": key_text, "field": f,
                    "digest": d} for key_text, fields in rows for f, d in fields.items()]
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(created_defaults), records)
            return
        except sa.exc.IntegrityError:
            pass  # some rows were created before (deleted and created again): replace those
        by_field: dict[str, list[str]] = {}
        for key_text, fields in rows:
            for f in fields:
                by_field.setdefault(f, []).append(key_text)
        with self.engine.begin() as conn:
            for f, keys in by_field.items():
                for i in range(0, len(keys), 900):  # below every database's parameter limit
                    conn.execute(sa.delete(created_defaults).where(
                        created_defaults.c.map == map_name,
                        created_defaults.c.row_key.in_(keys[i:i + 900]),
                        created_defaults.c.side == side, created_defaults.c.field == f))
            conn.execute(sa.insert(created_defaults), records)

    def created_defaults(self, map_name: str, keys: Sequence[str]
                         ) -> dict[tuple[str, str], dict[str, str | None]]:
        """(side, key digest) -> {column: digest} for the given key digests."""
        out: dict[tuple[str, str], dict[str, str | None]] = {}
        wanted = list(dict.fromkeys(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 900):  # below every database's parameter limit
                for side, row_key, f, d in conn.execute(sa.select(
                        created_defaults.c.side, created_defaults.c.row_key,
                        created_defaults.c.field, created_defaults.c.digest).where(
                        created_defaults.c.map == map_name,
                        created_defaults.c.row_key.in_(wanted[i:i + 900]))):
                    out.setdefault((side, row_key), {})[f] = d
        return out

    def put_creating(self, map_name: str, sides: Mapping[str, Sequence[str]]) -> None:
        """Name the rows (key digests per side) the chunk about to be written creates,
        replacing what an earlier chunk named."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sync_creating).where(sync_creating.c.map == map_name))
            conn.execute(sa.insert(sync_creating), [
                {"map": map_name, "side": side, "key_digests": json.dumps(list(keys))}
                for side, keys in sides.items()])

    def creating(self, map_name: str) -> dict[str, set[str]]:
        """What :meth:`put_creating` last named for the map (nothing once cleared)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sync_creating.c.side, sync_creating.c.key_digests).where(
                sync_creating.c.map == map_name)).all()
        return {side: set(json.loads(keys)) for side, keys in rows}

    def clear_creating(self, map_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sync_creating).where(sync_creating.c.map == map_name))

    def forget_created_defaults(self, map_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(created_defaults).where(created_defaults.c.map == map_name))
