"""Tests of scripts/module_graph.py on small crates written to a temp dir.

    python3 -m unittest scripts/test_module_graph.py
"""

import contextlib
import io
import os
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import module_graph as mg  # noqa: E402


def crate(files):
    """Writes `files` ({path: text}) under a temp dir; returns the dir."""
    d = tempfile.mkdtemp(prefix="module-graph-test.")
    for path, text in files.items():
        full = os.path.join(d, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as fh:
            fh.write(textwrap.dedent(text))
    return d


def run(src, *args):
    """Runs the tool on `src`; returns (exit code, output)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["module_graph.py", "--src", src, *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            mg.main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
    return code, out.getvalue()


LIB = """\
//! Crate map:
//! - [`model`]: m.
//! - [`store`]: s.
//! - [`routes`]: r.
pub mod model;
pub mod store;
pub mod routes;
"""


class ExpandUse(unittest.TestCase):
    def test_groups_self_alias_and_glob(self):
        self.assertEqual(
            mg.expand_use("crate::store::{self, mongo::X as Y,\n a::{b, c::*}}"),
            [
                (["crate", "store"], None),
                (["crate", "store", "mongo", "X"], "Y"),
                (["crate", "store", "a", "b"], None),
                (["crate", "store", "a", "c"], "*"),
            ],
        )

    def test_identifiers_containing_as_are_kept(self):
        self.assertEqual(mg.expand_use("super::fast_path::Fast"), [(["super", "fast_path", "Fast"], None)])


class Strip(unittest.TestCase):
    def test_comments_strings_and_test_items_are_not_code(self):
        code = mg.drop_test_items(
            mg.strip(
                textwrap.dedent(
                    """\
                    // use crate::a::X;
                    /* crate::b::Y */
                    let s = "crate::c::Z";
                    let r = r#"crate::d::W"#;
                    let ch = '"';
                    #[cfg(test)]
                    mod tests { use crate::e::V; }
                    use crate::f::U;
                    """
                )
            )
        )
        for gone in "abcde":
            self.assertNotIn(f"crate::{gone}::", code)
        self.assertIn("crate::f::U", code)
        self.assertEqual(code.count("\n"), 8, "line numbers are kept")


class Graph(unittest.TestCase):
    def test_upward_import_and_cycle_are_reported(self):
        src = crate(
            {
                "lib.rs": LIB,
                "model.rs": "use crate::store::Store;\npub struct M;\n",
                "store/mod.rs": "use crate::model::M;\npub struct Store;\n",
                "routes.rs": "use crate::store::Store;\n",
            }
        )
        code, out = run(src, "--check")
        self.assertEqual(code, 1)
        self.assertIn("model (0) -> store (2): model.rs:1", out)
        self.assertIn("  2: model store", out)
        self.assertIn("  2: model.rs store/mod.rs", out)

    def test_clean_crate_passes_check(self):
        src = crate(
            {
                "lib.rs": LIB,
                "model.rs": "pub struct M;\n",
                "store/mod.rs": "mod mem;\npub use mem::Mem;\nuse crate::model::M;\n",
                "store/mem.rs": "use super::super::model::M;\npub struct Mem;\n",
                "routes.rs": "use crate::store::Mem;\nfn f() { crate::model::M; }\n",
            }
        )
        code, out = run(src, "--check", "--edges")
        self.assertEqual(code, 0, out)
        self.assertIn("upward imports (lower layer -> higher layer): 0", out)
        # The re-export sends `crate::store::Mem` to the file defining it.
        self.assertIn("routes -> store  (1: routes.rs:1)", out)

    def test_reexport_is_not_a_use_unless_counted(self):
        # mod.rs re-exports its child; the child uses a type of mod.rs.
        src = crate(
            {
                "lib.rs": LIB,
                "model.rs": "",
                "routes.rs": "",
                "store/mod.rs": "mod mem;\npub use self::mem::Mem;\npub struct Error;\n",
                "store/mem.rs": "use super::Error;\npub struct Mem;\n",
            }
        )
        _, out = run(src)
        self.assertIn("file cycles (SCCs of more than one file): 0", out)
        _, out = run(src, "--count-reexports")
        self.assertIn("  2: store/mem.rs store/mod.rs", out)

    def test_upward_reexport_is_reported(self):
        src = crate(
            {
                "lib.rs": LIB,
                "model.rs": "pub use crate::store::Store;\n",
                "store/mod.rs": "pub struct Store;\n",
                "routes.rs": "",
            }
        )
        code, out = run(src, "--check")
        self.assertEqual(code, 1)
        self.assertIn("file cycles (SCCs of more than one file): 0", out)
        self.assertIn("model (0) -> store (2): model.rs:1", out)

    def test_super_in_an_inline_module_and_macro(self):
        src = crate(
            {
                "lib.rs": LIB,
                "model.rs": "",
                "routes.rs": "",
                # `super` in `mod prelude { … }` is `store`, not the crate
                # root; in a macro body it is wherever the macro expands.
                "store/mod.rs": (
                    "pub mod prelude { pub use super::Error; }\n"
                    "macro_rules! m { () => { use super::routes::X; } }\n"
                    "pub struct Error;\n"
                ),
            }
        )
        _, out = run(src, "--edges", "--count-reexports")
        self.assertNotIn("store -> lib", out)
        self.assertNotIn("store -> routes", out)

    def test_long_file_and_missing_map_entry(self):
        src = crate(
            {
                "lib.rs": LIB + "pub mod extra;\n",
                "model.rs": "\n" * 801,
                "store/mod.rs": "",
                "routes.rs": "",
                "extra.rs": "",
            }
        )
        code, out = run(src, "--check")
        self.assertEqual(code, 1)
        self.assertIn("model.rs: 801", out)
        self.assertIn("modules missing from lib.rs's crate map: 1 extra", out)
        self.assertIn("modules without a layer (add them to LAYERS): extra", out)


if __name__ == "__main__":
    unittest.main()
