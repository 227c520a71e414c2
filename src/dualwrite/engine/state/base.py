"""What every part of the state store shares."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


class StoreBase:
    """The state store's engine and its short-lived read cache; every part of
    :class:`~dualwrite.engine.state.StateStore` works through them. Every method of a part
    is one short transaction."""

    url: str
    engine: sa.Engine
    #: reads that live writes may reuse for CACHE_SECONDS (running maps, principals)
    _cache: dict[Any, tuple[float, Any]]
