"""YAML as the inventory reads it: the safe loader, refusing a key given twice in one mapping.

PyYAML keeps the last value of a repeated key and says nothing, so a second ``production:``
block in an inventory silently replaces the first (and drops its ``protected: true``).
``load_yaml`` returns the document and every repeated key as ``(path, problem, fix)``, naming
the key's path (``environments.prod.databases[0].dsn``) and both lines, for the inventory's
error report.

It also bounds what a document may cost: nesting deeper than ``MAX_DEPTH`` (PyYAML composes
recursively, so 100k nested brackets end in a ``RecursionError``) and aliases that expand to
more than ``MAX_NODES`` values (a "billion laughs" document: a few lines whose aliases
multiply into billions of nodes) are refused as ``LimitError``, a ``yaml.YAMLError`` with the
line where the limit was passed.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.error import MarkedYAMLError

MAX_DEPTH = 64
"""How deep mappings and lists may nest (an inventory needs about 6)."""
MAX_NODES = 100_000
"""How many values a document may hold once its aliases are expanded."""


class LimitError(MarkedYAMLError):
    """The document passes one of the limits (``MAX_DEPTH``, ``MAX_NODES``)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key given twice, at any depth.

    PyYAML keeps the last value of a repeated key silently, so a second ``production:`` block
    would replace the first one (and drop its ``protected: true``). Every repeated key is
    collected (``duplicates``: ``(path, problem, fix)`` naming both lines); the caller
    reports them all at once. Keys brought in by a YAML merge (``<<: *anchor``) may be
    overridden by the mapping's own keys, as YAML defines: only the mapping's own keys count.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._found: list[tuple[int, int, tuple[str, str, str]]] = []
        self._paths: dict[int, str] = {}
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise LimitError(
                    problem=f"nests deeper than {MAX_DEPTH} levels",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        self._name_paths(node, "")
        return super().construct_document(node)

    def _name_paths(self, node: yaml.Node, path: str) -> None:
        """Remember the inventory path (``environments.prod.databases[0]``) of each mapping."""
        if id(node) in self._paths:  # an alias of a node already seen (or a cycle)
            return
        self._paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                self._name_paths(value_node, f"{path}.{name}" if path else name)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._name_paths(item, f"{path}[{index}]")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        where = self._paths.get(id(node), "")
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the SafeLoader refuses it below
                continue
            if first is not key_node.start_mark:
                both = _places(first, key_node.start_mark)
                mark = key_node.start_mark
                self._found.append(
                    (
                        mark.line,
                        mark.column,
                        (
                            f"{where}.{key}" if where else str(key),
                            f"is defined twice ({both}): YAML keeps only the second one and "
                            "silently drops everything the first one sets",
                            f"merge the two `{key}:` entries into one, or rename one of them",
                        ),
                    )
                )
        return super().construct_mapping(node, deep=deep)

    @property
    def duplicates(self) -> list[tuple[str, str, str]]:
        """Every repeated key as ``(path, problem, fix)``, in the order of the file."""
        return [problem for _line, _column, problem in sorted(self._found)]


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than ``MAX_NODES`` values (each node's
    expanded size is counted once, so this costs one pass over the composed nodes)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a cycle (a recursive alias) counts once
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        if total > MAX_NODES:
            raise LimitError(
                problem=f"expands to more than {MAX_NODES} values through its aliases "
                "(a 'billion laughs' document)",
                problem_mark=node.start_mark,
            )
        sizes[id(node)] = total
        return total

    size(root)


def _places(first: yaml.Mark, second: yaml.Mark) -> str:
    if first.line == second.line:
        return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
    return f"lines {first.line + 1} and {second.line + 1}"


def load_yaml(text: str) -> tuple[Any, list[tuple[str, str, str]]]:
    """The YAML document and every duplicate key in it (see ``UniqueKeyLoader``)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()
