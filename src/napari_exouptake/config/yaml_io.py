"""Assay configs to and from YAML: a hardened loader (size, UTF-8, nesting depth, duplicate
keys; one-line errors), save/dump, and ``config_hash``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .assay import AssayConfig
from .errors import ConfigError

#: Largest config file or YAML string, bytes (a full config is a few kB).
MAX_CONFIG_BYTES = 1024**2
#: Deepest nesting of mappings and lists in a config (the real one needs 4).
MAX_CONFIG_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and deep nesting (one-line errors)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"line {mark.line + 1}: nested deeper than {MAX_CONFIG_DEPTH} levels; "
                    "an assay config needs a few"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor says so
                break
            if first is not None:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} appears twice (first on "
                    f"line {first}); keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(raw: bytes | str, origin: str) -> Any:
    """Size limit, UTF-8 check, then YAML with the hardened loader."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{origin}: {len(raw):,} bytes is too large for an assay config "
            f"(limit {MAX_CONFIG_BYTES:,} bytes)"
        )
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{origin}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
                f"{exc.start}); save the file as UTF-8"
            ) from None
    else:
        text = raw
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply") from None


def load_config(source: str | Path | Mapping[str, Any]) -> AssayConfig:
    """Load an assay config from a YAML file path, a YAML string or a mapping.

    YAML is read with a safe loader that refuses duplicate keys, nesting deeper than
    ``MAX_CONFIG_DEPTH`` and text larger than ``MAX_CONFIG_BYTES`` or not UTF-8.

    Raises
    ------
    ConfigError
        For a missing file, invalid YAML or any invalid key or value (the message names it).
    """
    if isinstance(source, Mapping):
        return AssayConfig.from_dict(source)
    raw: bytes | str
    origin: str
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"{path}: {size:,} bytes is too large for an assay config "
                    f"(limit {MAX_CONFIG_BYTES:,} bytes)"
                )
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
        origin = str(path)
    else:
        raw = str(source)
        origin = "<string>"
    data = _parse_yaml(raw, origin)
    try:
        return AssayConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def dump_config(config: AssayConfig) -> str:
    """YAML text of a config; :func:`load_config` of it gives an equal config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def save_config(config: AssayConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path`` and return the path."""
    path = Path(path)
    path.write_text(dump_config(config), encoding="utf-8")
    return path


def config_hash(config: AssayConfig) -> str:
    """SHA-256 (hex) of the config's canonical JSON; equal configs give equal hashes."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
