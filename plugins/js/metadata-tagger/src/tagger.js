// Pure logic of the metadata-tagger plugin: no WIT imports here, so it runs
// (and is unit-tested) under plain Node.js as well as inside the component.

/** Default `tags` added to what GET returns. */
export const DEFAULT_TAGS = Object.freeze({ js_plugin: true });

/**
 * Parses the plugin's config (JSON text from `host.config`).
 *
 * Returns `{ forbiddenPrefix, tags }`; throws an Error with a readable message
 * when the config has the wrong shape.
 */
export function parseConfig(text) {
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    throw new Error(`config is not JSON: ${e.message}`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw new Error('config must be an object');
  }
  for (const key of Object.keys(cfg)) {
    if (key !== 'forbidden_prefix' && key !== 'tags') {
      throw new Error(`unknown config key "${key}"`);
    }
  }
  const forbiddenPrefix = cfg.forbidden_prefix ?? null;
  if (forbiddenPrefix !== null && (typeof forbiddenPrefix !== 'string' || forbiddenPrefix === '')) {
    throw new Error('"forbidden_prefix" must be a non-empty string');
  }
  const tags = cfg.tags ?? DEFAULT_TAGS;
  if (tags === null || typeof tags !== 'object' || Array.isArray(tags)) {
    throw new Error('"tags" must be an object');
  }
  return { forbiddenPrefix, tags };
}

/**
 * The first reserved key in an update, as a dotted path, or null.
 *
 * A key is reserved when it starts with `forbiddenPrefix`: any segment of an
 * assigned path (`profile.tmp_x`), or any key of an object inside the value
 * (`{"profile": {"tmp_x": 1}}` assigned to `profile`).
 *
 * `assignments` is a list of `{ path, value }` with `value` as JSON text.
 */
export function reservedKey(forbiddenPrefix, assignments) {
  if (forbiddenPrefix === null) {
    return null;
  }
  for (const { path, value } of assignments) {
    const segments = path.split('.');
    const i = segments.findIndex((s) => s.startsWith(forbiddenPrefix));
    if (i >= 0) {
      return segments.slice(0, i + 1).join('.');
    }
    const nested = reservedInValue(forbiddenPrefix, JSON.parse(value), path);
    if (nested !== null) {
      return nested;
    }
  }
  return null;
}

function reservedInValue(prefix, value, at) {
  if (Array.isArray(value)) {
    for (const item of value) {
      const found = reservedInValue(prefix, item, at);
      if (found !== null) {
        return found;
      }
    }
  } else if (value !== null && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) {
      const path = `${at}.${key}`;
      if (key.startsWith(prefix)) {
        return path;
      }
      const found = reservedInValue(prefix, inner, path);
      if (found !== null) {
        return found;
      }
    }
  }
  return null;
}

/** The reason given to the client for a reserved key. */
export function denyReason(key) {
  return `key ${JSON.stringify(key)} is reserved`;
}

/**
 * What GET shows: the metadata (JSON text of an object) with `tags` merged in
 * at the top level (a tag replaces a stored key of the same name). Returns
 * JSON text.
 */
export function tagMetadata(metadataJson, tags) {
  const metadata = JSON.parse(metadataJson);
  return JSON.stringify({ ...metadata, ...tags });
}
