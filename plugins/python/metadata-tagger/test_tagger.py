"""Unit tests of tagger.py under plain CPython: `python3 -m unittest` here."""

import json
import unittest

import tagger


class ParseConfig(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(tagger.parse_config("{}"), (None, {"py_plugin": True}))

    def test_values(self):
        text = '{"forbidden_prefix": "tmp_", "tags": {"team": "a"}}'
        self.assertEqual(tagger.parse_config(text), ("tmp_", {"team": "a"}))

    def test_rejects_bad_shapes(self):
        for text, message in [
            ("nope", "config is not JSON"),
            ("[]", "config must be an object"),
            ('{"x": 1}', 'unknown config key "x"'),
            ('{"forbidden_prefix": ""}', "non-empty string"),
            ('{"forbidden_prefix": 3}', "non-empty string"),
            ('{"tags": []}', '"tags" must be an object'),
        ]:
            with self.subTest(text=text):
                with self.assertRaisesRegex(tagger.ConfigError, message):
                    tagger.parse_config(text)


class ReservedKey(unittest.TestCase):
    def test_nothing_forbidden(self):
        self.assertIsNone(tagger.reserved_key(None, [("tmp_x", "1")]))

    def test_in_a_path(self):
        self.assertEqual(tagger.reserved_key("tmp_", [("tmp_x", "1")]), "tmp_x")
        self.assertEqual(
            tagger.reserved_key("tmp_", [("ok", "1"), ("profile.tmp_x.y", "1")]),
            "profile.tmp_x",
        )

    def test_inside_a_value(self):
        value = json.dumps({"tier": "gold", "list": [{"tmp_note": 1}]})
        self.assertEqual(
            tagger.reserved_key("tmp_", [("profile", value)]), "profile.list.tmp_note"
        )

    def test_allowed(self):
        self.assertIsNone(tagger.reserved_key("tmp_", [("status", '"tmp_ is a value"')]))

    def test_reason(self):
        self.assertEqual(tagger.deny_reason("tmp_x"), 'key "tmp_x" is reserved')


class TagMetadata(unittest.TestCase):
    def test_merges_tags_and_keeps_order(self):
        out = tagger.tag_metadata('{"b": 1, "a": {"c": 2}}', {"py_plugin": True})
        self.assertEqual(out, '{"b":1,"a":{"c":2},"py_plugin":true}')


if __name__ == "__main__":
    unittest.main()
