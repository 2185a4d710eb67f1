"""Pure logic of the Python metadata-tagger plugin.

No WIT imports here, so it runs (and is unit-tested) under plain CPython as
well as inside the component. Same behaviour as the JavaScript
metadata-tagger (plugins/js), with its own default tag.
"""

import json

#: Tags added to what GET returns when the config names none.
DEFAULT_TAGS = {"py_plugin": True}


class ConfigError(ValueError):
    """The plugin's config has the wrong shape."""


def parse_config(text):
    """Parses the config (JSON text from `host.config`).

    Returns `(forbidden_prefix, tags)`; `forbidden_prefix` is None when
    nothing is forbidden. Raises ConfigError with a readable message.
    """
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config must be an object")
    for key in cfg:
        if key not in ("forbidden_prefix", "tags"):
            raise ConfigError(f'unknown config key "{key}"')
    prefix = cfg.get("forbidden_prefix")
    if prefix is not None and (not isinstance(prefix, str) or prefix == ""):
        raise ConfigError('"forbidden_prefix" must be a non-empty string')
    tags = cfg.get("tags", DEFAULT_TAGS)
    if not isinstance(tags, dict):
        raise ConfigError('"tags" must be an object')
    return prefix, tags


def reserved_key(prefix, assignments):
    """The first reserved key of an update, as a dotted path, or None.

    A key is reserved when it starts with `prefix`: a segment of an assigned
    path (`profile.tmp_x`) or a key of an object inside the assigned value.
    `assignments` is a list of `(path, value_json)` pairs.
    """
    if prefix is None:
        return None
    for path, value in assignments:
        segments = path.split(".")
        for i, segment in enumerate(segments):
            if segment.startswith(prefix):
                return ".".join(segments[: i + 1])
        found = _reserved_in_value(prefix, json.loads(value), path)
        if found is not None:
            return found
    return None


def _reserved_in_value(prefix, value, at):
    if isinstance(value, list):
        for item in value:
            found = _reserved_in_value(prefix, item, at)
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, inner in value.items():
            path = f"{at}.{key}"
            if key.startswith(prefix):
                return path
            found = _reserved_in_value(prefix, inner, path)
            if found is not None:
                return found
    return None


def deny_reason(key):
    """The reason a denied update is given."""
    return f'key "{key}" is reserved'


def tag_metadata(metadata_json, tags):
    """The metadata JSON object with `tags` merged in at the top level."""
    metadata = json.loads(metadata_json)
    metadata.update(tags)
    return json.dumps(metadata, separators=(",", ":"))
