"""The demo's bundled map files (package data under ``dualwrite/demo/maps``)."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

from dualwrite.model.maps import TableMap, dependency_order, parse_map_document
from dualwrite.model.yamlio import load_yaml

__all__ = ["MAP_NAMES", "load_maps", "map_texts", "maps_dir"]

#: every bundled map, in ``depends_on`` order
MAP_NAMES: tuple[str, ...] = (
    "currencies", "customer_groups", "contacts", "customers", "products", "purchase_orders",
    "assets", "purchase_order_lines", "inventory_onhand", "sales_orders", "sales_order_lines",
    "invoices", "invoice_lines",
)


def maps_dir() -> Traversable:
    """The folder of the bundled ``*.yaml`` map files."""
    return resources.files("dualwrite.demo").joinpath("maps")


def map_texts() -> dict[str, str]:
    """File name → YAML text of every bundled map, sorted by file name."""
    return {entry.name: entry.read_text(encoding="utf-8")
            for entry in sorted(maps_dir().iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def load_maps() -> list[TableMap]:
    """Parse every bundled map (``load_yaml`` + ``parse_map_document``); dependencies first.

    Raises the loader's ConfigError/MapSyntaxError if a bundled file is broken.
    """
    maps = [parse_map_document(load_yaml(text, file=name), file=f"demo/maps/{name}")
            for name, text in map_texts().items()]
    rank = {n: i for i, n in enumerate(MAP_NAMES)}
    maps.sort(key=lambda m: (rank.get(m.name, len(rank)), m.name))
    return dependency_order(maps)
