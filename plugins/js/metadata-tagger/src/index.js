// metadata-tagger: an example metadata hook written in JavaScript, built into
// a WebAssembly component (world `gateway:hooks/metadata-plugin@0.1.0`) by
// ../../build.sh (QuickJS by default, or StarlingMonkey). See ../../README.md.
//
// Configuration (the plugin's `config` table in gateway.toml):
//
//   { "forbidden_prefix": "tmp_", "tags": { "js_plugin": true } }
//
// * `forbidden_prefix` (optional, absent = deny nothing): `before-change`
//   denies an update that sets a key starting with it, anywhere in a path or
//   inside an object value, with the reason `key "tmp_x" is reserved`.
//   Deletes are always allowed, so such keys can still be cleaned up.
// * `tags` (optional, default `{"js_plugin": true}`): merged into what
//   `on-get` returns (top level); the stored metadata is unchanged.
//
// A config it cannot understand denies every change (fail closed) and adds no
// tags; both log an error. `after-change` does nothing.

import './console.js';
import { log, config } from 'gateway:hooks/host@0.1.0';
import { denyReason, parseConfig, reservedKey, tagMetadata } from './tagger.js';

// Parsed once per instance: the config is fixed for an instance's life.
let settings;

function getSettings() {
  if (settings === undefined) {
    try {
      settings = { ok: true, value: parseConfig(config()) };
      // console.* goes to host.log too (see console.js).
      console.debug('config loaded:', settings.value);
    } catch (e) {
      settings = { ok: false, error: e.message };
    }
  }
  if (!settings.ok) {
    log('error', `invalid config: ${settings.error}`, []);
  }
  return settings;
}

function sessionFields(session) {
  return [
    { key: 'tenant', value: session.tenant },
    { key: 'session_id', value: session.sessionId },
  ];
}

export const metadataHook = {
  beforeChange(session, change) {
    const s = getSettings();
    if (!s.ok) {
      return { tag: 'deny', val: `metadata tagger misconfigured: ${s.error}` };
    }
    if (change.tag !== 'update') {
      return { tag: 'allow' };
    }
    const key = reservedKey(s.value.forbiddenPrefix, change.val);
    if (key === null) {
      return { tag: 'allow' };
    }
    log('info', 'denied a reserved key', [...sessionFields(session), { key: 'key', value: key }]);
    return { tag: 'deny', val: denyReason(key) };
  },

  afterChange(_session, _change, _changed, _values, _info) {},

  onGet(_session, metadata) {
    const s = getSettings();
    return s.ok ? tagMetadata(metadata, s.value.tags) : metadata;
  },
};
