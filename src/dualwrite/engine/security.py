"""Bearer tokens, their roles and licences, and the one rule of what each role may do.

A token is shown once; only its SHA-256 is stored. Each token has a role:

- ``reader``: reads (``GET``: the service document, ``$metadata``, collections, entities,
  ``$count``; a ``$batch`` whose requests are reads);
- ``writer``: reads and writes (``POST``, ``PATCH``, ``PUT``, ``DELETE`` of entities, and
  ``$batch`` requests and change sets that write);
- ``admin``: all of that, and the admin endpoints (tokens, map control; the console when it
  exists).

A token made with no role is a reader. A token may carry licences of its own, narrower than
its principal's: its effective licences are those it names that its principal holds. A token
with none of its own uses its principal's.

Tokens made before roles (their ``role`` is NULL) keep the highest role their principal was
granted, and are readers when it was granted none of the three.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from dualwrite.engine.state import CACHE_SECONDS, StateStore
from dualwrite.errors import AccessDenied, DualwriteError

TOKEN_PREFIX = "dw_"

#: the roles, each allowed what the ones before it are
ROLES = ("reader", "writer", "admin")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the principal's name, the token's effective role and licences,
    and the token's id (None for a principal not acting through a token)."""

    name: str
    role: str = "reader"
    licences: frozenset[str] = frozenset()
    token_id: str | None = None

    def may(self, role: str) -> bool:
        """Whether this principal's role includes ``role``'s rights."""
        return _rank(self.role) >= _rank(role)


def _rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def required_role(method: str) -> str:
    """The role an HTTP request with ``method`` needs on the OData service."""
    return "reader" if method.upper() in ("GET", "HEAD") else "writer"


def check_role(principal: Principal, needed: str, *, what: str) -> None:
    """Raise AccessDenied when ``principal`` may not do ``what``, which needs ``needed``.
    The one place where roles are enforced."""
    if not principal.may(needed):
        raise AccessDenied(
            f"principal {principal.name!r} (token role {principal.role}) may not {what}: "
            f"that needs role {needed}; nothing was done",
            principal=principal.name, role=principal.role, needed=needed)


def valid_role(role: str) -> str:
    """``role`` when it is one of :data:`ROLES`; a clear error otherwise."""
    if role not in ROLES:
        raise DualwriteError(f"unknown role {role!r}",
                             hint=f"use one of {', '.join(ROLES)} (each includes the ones "
                             "before it)")
    return role


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(state: StateStore, principal: str, *, role: str = "reader",
                 licences: Sequence[str] | None = None) -> str:
    """A new token for ``principal`` (``dw_<id>_<secret>``; only its hash is kept).

    The token has ``role``. The ``licences`` are granted to the principal and, when given,
    are the token's own: it holds those only (a narrower token than others of the same
    principal); with ``licences`` None it uses whatever its principal holds. The role is the
    token's alone: granting it to the principal would raise the principal's older tokens,
    which take their role from it."""
    valid_role(role)
    token_id = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    state.grant(principal, [], licences or [])
    state.add_token(token_id, principal, token_hash(token), role=role,
                    licences=None if licences is None else list(licences))
    return token


def effective(token_role: str | None, token_licences: frozenset[str] | None,
              principal_roles: frozenset[str], principal_licences: frozenset[str]
              ) -> tuple[str, frozenset[str]]:
    """(role, licences) a token acts with: its own role (a token made before roles: its
    principal's highest, else reader), and its own licences that its principal holds (all
    of the principal's when it has none of its own)."""
    if token_role is None:
        known = [r for r in ROLES if r in principal_roles]
        token_role = known[-1] if known else "reader"
    if token_licences is None:
        return token_role, principal_licences
    held = {x.casefold() for x in principal_licences}
    return token_role, frozenset(x for x in token_licences if x.casefold() in held)


def authenticate(state: StateStore, token: str, max_age: float = CACHE_SECONDS
                 ) -> Principal | None:
    """The principal of a valid, unrevoked token, with the token's role and licences; None
    otherwise.

    Every request of the OData service asks this. A valid token and its principal's roles
    and licences are reused for up to ``max_age`` seconds, so a revocation or a grant made by
    another process takes up to that long to show (one made through this state store clears
    its cache at once)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    found = state.token(token_hash(token), max_age)
    if found is None:
        return None
    roles, licences = state.principal(found["principal"], max_age)
    role, own = effective(found["role"], found["licences"], roles, licences)
    return Principal(found["principal"], role, own, found["id"])


__all__ = ["ROLES", "TOKEN_PREFIX", "Principal", "authenticate", "check_role",
           "create_token", "effective", "required_role", "token_hash",
           "valid_role"]
