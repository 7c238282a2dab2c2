"""YAML and JSONL reading that remembers where every value came from.

Config and constitution errors must name file:line, so mappings are loaded as
`LineDict`s that keep the 1-based line of each key.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import yaml

from .errors import CharterError, where


class LineDict(dict):
    """A dict that also knows the source file and the line of each key."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.file, self.line, self.lines = "<memory>", None, {}

    def line_of(self, key):
        return self.lines.get(key)

    def loc(self, key=None) -> str:
        line = self.line_of(key) if key is not None else self.line
        if isinstance(line, str):  # a value set from the command line names its override
            return line
        return where(self.file, line)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    written = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
    loader.flatten_mapping(node)  # `<<: *anchor` keys go first; the mapping's own keys then override them
    merged = len(node.value) - written
    out = LineDict()
    out.file = loader.name
    out.line = node.start_mark.line + 1
    out.lines = {}
    own = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise CharterError(f"{where(loader.name, key_node.start_mark.line + 1)}: mapping keys must be plain scalars")
        if i >= merged:
            if key in own:
                raise CharterError(f"{where(loader.name, key_node.start_mark.line + 1)}: duplicate key {key!r}")
            own.add(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path) -> object:
    """Parse a YAML file; syntax errors become CharterErrors naming file:line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CharterError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CharterError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as e:
        raise CharterError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    return loads_yaml(text, str(path))


def loads_yaml(text: str, name: str = "<string>"):
    loader = None
    try:
        loader = _Loader(text)
        loader.name = name
        return loader.get_single_data()
    except CharterError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise CharterError(f"{where(name, line)}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise CharterError(f"{name}: invalid YAML: {str(e).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_jsonl(path, tolerate_torn_tail=False) -> list[dict]:
    """Read a JSONL file (gzip-compressed if its name ends in .gz) into dicts; each bad line is an error
    naming file:line, and each row keeps its line as `_line`.

    `tolerate_torn_tail` drops a last line without a newline that fails to
    parse: that is what a crash in the middle of an append leaves behind.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise CharterError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CharterError(f"{path}: is a directory, expected a JSONL file") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise CharterError(f"{path}: cannot decompress ({e})") from None
    rows = []
    raw_lines = data.split(b"\n")
    for i, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        last = i == len(raw_lines)  # no trailing newline after it
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if tolerate_torn_tail and last:
                break
            raise CharterError(f"{where(path, i)}: not a JSON line ({type(e).__name__}: {e})") from None
        if not isinstance(row, dict):
            raise CharterError(f"{where(path, i)}: expected a JSON object, got {type(row).__name__}")
        row["_line"] = i
        rows.append(row)
    return rows
