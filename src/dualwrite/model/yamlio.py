"""YAML loading that remembers line numbers, so errors can say ``file:line``. Pure."""

from __future__ import annotations

from typing import Any

import yaml

from dualwrite.errors import ConfigError


class LineDict(dict[Any, Any]):
    """A dict that knows the line of itself and of each key (1-based)."""

    line: int | None = None
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A list that knows the line of itself and of each item (1-based)."""

    line: int | None = None
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    d = LineDict()
    d.line = node.start_mark.line + 1
    d.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        d[key] = loader.construct_object(value_node, deep=True)
        d.key_lines[key] = key_node.start_mark.line + 1
    return d


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    items = LineList(loader.construct_object(n, deep=True) for n in node.value)
    items.line = node.start_mark.line + 1
    items.item_lines = [n.start_mark.line + 1 for n in node.value]
    return items


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(text: str, *, file: str | None = None) -> Any:
    """Parse YAML text; mappings and lists carry line numbers (see :func:`line_of`)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
            hint="check indentation and quoting; quote values containing ': ' or '#'",
            file=file, line=mark.line + 1 if mark else None, code="DW002",
        ) from exc


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of ``container`` itself, or of one of its keys (dict) or items (list)."""
    if key is None:
        return getattr(container, "line", None)
    if isinstance(container, LineDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, LineList) and isinstance(key, int):
        if 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return None
