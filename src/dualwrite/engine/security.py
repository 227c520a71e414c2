"""Bearer tokens and principals. A token is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from dualwrite.engine.state import CACHE_SECONDS, StateStore

TOKEN_PREFIX = "dw_"


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]
    licences: frozenset[str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(state: StateStore, principal: str, *, roles: Sequence[str] = (),
                 licences: Sequence[str] = ()) -> str:
    """Grant the roles and licences to the principal and return a new token for it."""
    token_id = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    state.grant(principal, roles, licences)
    state.add_token(token_id, principal, token_hash(token))
    return token


def authenticate(state: StateStore, token: str, max_age: float = CACHE_SECONDS
                 ) -> Principal | None:
    """The principal of a valid, unrevoked token; None otherwise.

    Every request of the OData service asks this. A valid token and its principal's roles
    and licences are reused for up to ``max_age`` seconds, so a revocation or a grant made by
    another process takes up to that long to show (one made through this state store clears
    its cache at once)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    name = state.token_principal(token_hash(token), max_age)
    if name is None:
        return None
    roles, licences = state.principal(name, max_age)
    return Principal(name, roles, licences)
