// Unit tests of the pure logic, under plain Node.js: `npm test` in plugins/js.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { DEFAULT_TAGS, denyReason, parseConfig, reservedKey, tagMetadata } from '../src/tagger.js';

const set = (path, value) => ({ path, value: JSON.stringify(value) });

test('config defaults and validation', () => {
  assert.deepEqual(parseConfig('{}'), { forbiddenPrefix: null, tags: DEFAULT_TAGS });
  assert.deepEqual(parseConfig('{"forbidden_prefix": "tmp_", "tags": {"team": "a"}}'), {
    forbiddenPrefix: 'tmp_',
    tags: { team: 'a' },
  });
  assert.throws(() => parseConfig('[]'), /must be an object/);
  assert.throws(() => parseConfig('{"forbidden_prefix": 3}'), /non-empty string/);
  assert.throws(() => parseConfig('{"forbidden_prefix": ""}'), /non-empty string/);
  assert.throws(() => parseConfig('{"tags": [1]}'), /"tags" must be an object/);
  assert.throws(() => parseConfig('{"forbiden_prefix": "x"}'), /unknown config key "forbiden_prefix"/);
  assert.throws(() => parseConfig('nope'), /not JSON/);
});

test('reserved keys in paths and values', () => {
  assert.equal(reservedKey('tmp_', [set('status', 'ok'), set('tmp_x', 1)]), 'tmp_x');
  assert.equal(reservedKey('tmp_', [set('profile.tmp_x.y', 1)]), 'profile.tmp_x');
  assert.equal(reservedKey('tmp_', [set('profile', { a: { tmp_b: 1 } })]), 'profile.a.tmp_b');
  assert.equal(reservedKey('tmp_', [set('list', [{ ok: 1 }, { tmp_z: 2 }])]), 'list.tmp_z');
  assert.equal(reservedKey('tmp_', [set('status', 'tmp_value'), set('x_tmp_', 1)]), null);
  assert.equal(reservedKey(null, [set('tmp_x', 1)]), null);
});

test('deny reason', () => {
  assert.equal(denyReason('tmp_x'), 'key "tmp_x" is reserved');
});

test('tags are merged into what GET shows', () => {
  assert.equal(tagMetadata('{"a":1}', DEFAULT_TAGS), '{"a":1,"js_plugin":true}');
  assert.equal(tagMetadata('{"js_plugin":"stored"}', DEFAULT_TAGS), '{"js_plugin":true}');
  assert.equal(tagMetadata('{}', {}), '{}');
});
