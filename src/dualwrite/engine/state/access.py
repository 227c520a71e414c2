"""Principals, their roles and licences, API tokens, and refused requests."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import now_iso
from dualwrite.engine.state.schema import principals, refusals, tokens


class PrincipalsState(StoreBase):
    """Principals (a part of :class:`StateStore`)."""

    # -- principals and tokens -------------------------------------------------------
    def grant(self, name: str, roles: Sequence[str], licences: Sequence[str]) -> None:
        """Add roles and licences to a principal (creating it)."""
        self._cache.pop(("principal", name), None)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
            old_roles = set(json.loads(row.roles)) if row else set()
            old_lic = set(json.loads(row.licences)) if row else set()
            values = {"roles": json.dumps(sorted(old_roles | set(roles))),
                      "licences": json.dumps(sorted(old_lic | set(licences)))}
            if row:
                conn.execute(sa.update(principals).where(principals.c.name == name)
                             .values(**values))
            else:
                conn.execute(sa.insert(principals).values(name=name, **values))

    def principal(self, name: str, max_age: float = 0.0
                  ) -> tuple[frozenset[str], frozenset[str]]:
        """(roles, licences) of a principal; empty for one never granted anything. With
        ``max_age``, an answer read that recently may be reused."""
        hit = self._cache.get(("principal", name))
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]  # type: ignore[no-any-return]
        got = self._read_principal(name)
        self._cache[("principal", name)] = (time.monotonic(), got)
        return got

    def _read_principal(self, name: str) -> tuple[frozenset[str], frozenset[str]]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
        if row is None:
            return frozenset(), frozenset()
        return frozenset(json.loads(row.roles)), frozenset(json.loads(row.licences))

    def add_token(self, token_id: str, principal: str, token_hash: str, *, role: str,
                  licences: Sequence[str] | None) -> None:
        """Store a token's hash with its role and its own licences (None: the principal's,
        whatever they are when it is used)."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(tokens).values(
                id=token_id, principal=principal, token_hash=token_hash, created_at=now_iso(),
                role=role, licences=None if licences is None else json.dumps(sorted(licences))))

    def token(self, token_hash: str, max_age: float = 0.0) -> dict[str, Any] | None:
        """``{"id", "principal", "role", "licences"}`` of an unrevoked token (role and
        licences None where the token has none of its own), or None. With ``max_age``, a
        valid answer read that recently may be reused (a revocation made by this store clears
        them at once)."""
        hit = self._cache.get(("token", token_hash))
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]  # type: ignore[no-any-return]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens.c.id, tokens.c.principal, tokens.c.role,
                                         tokens.c.licences).where(
                tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))).first()
        if row is None:  # not cached: a token created elsewhere must not wait for a stale "no"
            return None
        got = {"id": row.id, "principal": row.principal, "role": row.role,
               "licences": None if row.licences is None
               else frozenset(json.loads(row.licences))}
        self._cache[("token", token_hash)] = (time.monotonic(), got)
        return got

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token (never the token itself): id, principal, role and licences of its own
        (None where it has none), created, revoked."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens.c.id, tokens.c.principal, tokens.c.role,
                                          tokens.c.licences, tokens.c.created_at,
                                          tokens.c.revoked_at).order_by(tokens.c.created_at))
            out = [dict(r._mapping) for r in rows]
        for r in out:
            r["licences"] = None if r["licences"] is None else json.loads(r["licences"])
        return out

    def revoke_token(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(tokens).where(tokens.c.id == token_id,
                                                     tokens.c.revoked_at.is_(None))
                             .values(revoked_at=now_iso()))
        for k in [k for k in self._cache if isinstance(k, tuple) and k[0] == "token"]:
            self._cache.pop(k, None)
        return n.rowcount > 0

    def add_refusal(self, principal: str, request: str, needed: str, reason: str, *,
                    token_id: str | None = None, environment: str | None = None) -> None:
        """Audit a refused request: who, with which token, what was asked, what it lacked."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(refusals).values(
                at=now_iso(), principal=principal, token_id=token_id, environment=environment,
                request=request[:2000], needed=needed, reason=reason[:2000]))

    def refusals(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest refused requests, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(refusals).order_by(refusals.c.id.desc())
                                .limit(limit)).all()
        return [dict(r._mapping) for r in rows]
