"""Reading a spec file: UTF-8 text and YAML that refuses duplicate keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlops_assets.spec.base import SpecError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (YAML itself would keep only the last value)."""


def refuse_duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    """Raise DuplicateKeyError for the first key repeated in a mapping of the composed `node`,
    naming its key path and both lines. Merge keys (`<<: *anchor`) may be overridden."""
    seen: set[int] = set()
    todo = [(node, path)]
    while todo:  # depth first, in document order
        node, path = todo.pop()
        if id(node) in seen:  # an alias, possibly recursive
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(reversed([(item, (*path, str(i))) for i, item in enumerate(node.value)]))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        children = []
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            children.append((value, (*path, name)))
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                raise DuplicateKeyError(
                    f"line {line}: duplicate key {'.'.join((*path, name))} (first at line "
                    f"{lines[key.tag, key.value]}); YAML would silently keep only the last one"
                )
            lines[key.tag, key.value] = line
        todo.extend(reversed(children))


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys (DuplicateKeyError)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_text(spec_path: Path) -> str:
    """The spec file as text; a file that cannot be read or is not UTF-8 is a SpecError."""
    try:
        data = spec_path.read_bytes()
    except OSError as exc:
        raise SpecError(f"pipeline spec {spec_path} cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"invalid pipeline spec {spec_path}: line {line}: not UTF-8 text (byte "
            f"0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
