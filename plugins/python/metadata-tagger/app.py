"""metadata-tagger: an example metadata hook written in Python.

Built into a WebAssembly component (world `gateway:hooks/metadata-plugin@0.1.0`)
by ../build.sh with componentize-py. The logic is in tagger.py.

Configuration (the plugin's `config` table in gateway.toml):

    { "forbidden_prefix": "tmp_", "tags": { "py_plugin": true } }

* `forbidden_prefix` (optional, absent = deny nothing): `before-change` denies
  an update that sets a key starting with it, in a path or inside an object
  value, with the reason `key "tmp_x" is reserved`. Deletes are allowed.
* `tags` (optional, default `{"py_plugin": true}`): merged into what `on-get`
  returns; the stored metadata is unchanged.

A config it cannot understand denies every change (fail closed) and adds no
tags; both log an error. `after-change` does nothing.
"""

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Field,
    Level,
    MetadataChange_Update,
    MetadataVerdict_Allow,
    MetadataVerdict_Deny,
)

import tagger

# Parsed once per instance: the config is fixed for an instance's life.
_settings = None


def _get_settings():
    global _settings
    if _settings is None:
        try:
            _settings = ("ok", tagger.parse_config(host.config()))
        except tagger.ConfigError as e:
            _settings = ("error", str(e))
    if _settings[0] == "error":
        host.log(Level.ERROR, f"invalid config: {_settings[1]}", [])
    return _settings


class MetadataHook(exports.MetadataHook):
    def before_change(self, session, change):
        status, value = _get_settings()
        if status == "error":
            return MetadataVerdict_Deny(f"metadata tagger misconfigured: {value}")
        if not isinstance(change, MetadataChange_Update):
            return MetadataVerdict_Allow()
        prefix, _tags = value
        key = tagger.reserved_key(prefix, [(a.path, a.value) for a in change.value])
        if key is None:
            return MetadataVerdict_Allow()
        host.log(
            Level.INFO,
            "denied a reserved key",
            [
                Field("tenant", session.tenant),
                Field("session_id", session.session_id),
                Field("key", key),
            ],
        )
        return MetadataVerdict_Deny(tagger.deny_reason(key))

    def after_change(self, session, change, changed, values, info):
        pass

    def on_get(self, session, metadata):
        status, value = _get_settings()
        if status == "error":
            return metadata
        return tagger.tag_metadata(metadata, value[1])
