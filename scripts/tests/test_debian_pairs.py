"""Tests for scripts/debian_pairs.py. Run: python3 -m unittest discover -s scripts/tests"""

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS_DIR))

import debian_corpus  # noqa: E402
import debian_pairs  # noqa: E402
from debian_pairs import Pair  # noqa: E402

PACKAGE_LIST = """\
Package: jq
Description: command-line JSON processor
Description-md5: 11111111111111111111111111111111

Package: libfoo1
Description: foo library
Description-md5: 22222222222222222222222222222222

Package: libfoo-dev
Description: foo library - development files
Description-md5: 33333333333333333333333333333333

Package: old-tool
Description: transitional package
Description-md5: 44444444444444444444444444444444

Package: older-tool
Description: transitional package
Description-md5: 55555555555555555555555555555555

Package: summary-only
Description: nothing more to say
Description-md5: 66666666666666666666666666666666

Package: local-only
Description: installed from a local file
 Its long description comes from the package stanza.

Package: jq
Description: a second stanza for jq that must be ignored
Description-md5: 77777777777777777777777777777777
"""

TRANSLATIONS = """\
Package: jq
Description-md5: 11111111111111111111111111111111
Description-en: command-line JSON processor
 jq is like sed for JSON data.

Package: libfoo1
Description-md5: 22222222222222222222222222222222
Description-en: foo library
 Foo computes bars.

Package: libfoo-dev
Description-md5: 33333333333333333333333333333333
Description-en: foo library - development files
 Foo computes bars.

Package: old-tool
Description-md5: 44444444444444444444444444444444
Description-en: transitional package
 This package moves users to new-tool.

Package: older-tool
Description-md5: 55555555555555555555555555555555
Description-en: transitional package
 This package moves users to newer-tool.
"""


def stanzas(text: str, fields: set[str]) -> list[dict[str, str]]:
    return list(debian_corpus.parse_stanzas(text.splitlines(keepends=True), fields))


def build_pairs() -> list[Pair]:
    translations = {
        (stanza["Package"], stanza["Description-md5"]): stanza["Description-en"]
        for stanza in stanzas(TRANSLATIONS, {"Package", "Description-md5", "Description-en"})
    }
    packages = stanzas(PACKAGE_LIST, {"Package", "Description", "Description-md5"})
    return debian_pairs.build_pairs(packages, translations)


class BuildPairsTest(unittest.TestCase):
    def test_pairs_summary_with_description(self):
        pairs = {pair.id: pair for pair in build_pairs()}
        self.assertEqual(pairs["jq"].anchor, "command-line JSON processor")
        self.assertEqual(pairs["jq"].positive, "jq is like sed for JSON data.")

    def test_inline_description_is_used(self):
        pairs = {pair.id: pair for pair in build_pairs()}
        self.assertEqual(pairs["local-only"].positive, "Its long description comes from the package stanza.")

    def test_drops_summary_only_package(self):
        self.assertNotIn("summary-only", {pair.id for pair in build_pairs()})

    def test_drops_every_pair_with_shared_text(self):
        ids = {pair.id for pair in build_pairs()}
        # libfoo1 and libfoo-dev share a description, old-tool and older-tool a summary.
        self.assertEqual(ids, {"jq", "local-only"})


class SplitTest(unittest.TestCase):
    def test_split_follows_name_hash(self):
        for name in ["jq", "libfoo1", "python3", "zsh"]:
            value = int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")
            expected = "held-out" if value % 100 < 10 else "train"
            self.assertEqual(debian_pairs.split_of(name, 10), expected, name)

    def test_splits_are_ordered_by_hash(self):
        pairs = [Pair(id=f"package-{index}", anchor=f"a{index}", positive=f"p{index}") for index in range(200)]
        splits = debian_pairs.split_pairs(pairs, 30)
        self.assertEqual(len(splits["train"]) + len(splits["held-out"]), 200)
        self.assertGreater(len(splits["held-out"]), 0)
        for split in splits.values():
            hashes = [debian_pairs.name_hash(pair.id) for pair in split]
            self.assertEqual(hashes, sorted(hashes))


class WriteShardsTest(unittest.TestCase):
    def setUp(self):
        self.out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.out)

    def test_inputs_pin_each_shard(self):
        pairs = [Pair(id=f"p{index}", anchor=f"anchor {index}", positive=f"positive {index}") for index in range(5)]
        inputs = debian_pairs.write_pair_shards(pairs, self.out, 2)

        self.assertEqual([entry["records"] for entry in inputs], [2, 2, 1])
        for entry in inputs:
            data = Path(entry["uri"].removeprefix("file://")).read_bytes()
            self.assertEqual(hashlib.sha256(data).hexdigest(), entry["sha256"])
        written = json.loads((self.out / "inputs.json").read_text())
        self.assertEqual(written, inputs)

    def test_lines_are_pair_records(self):
        pairs = [Pair(id="jq", anchor="JSON processor", positive="jq filters JSON.\n\nIt is fast.")]
        inputs = debian_pairs.write_pair_shards(pairs, self.out, 10)

        line = Path(inputs[0]["uri"].removeprefix("file://")).read_text().splitlines()[0]
        self.assertEqual(json.loads(line), {"id": "jq", "anchor": "JSON processor",
                                            "positive": "jq filters JSON.\n\nIt is fast."})

    def test_deletes_stale_shards(self):
        pairs = [Pair(id=f"p{index}", anchor=f"a{index}", positive=f"b{index}") for index in range(4)]
        debian_pairs.write_pair_shards(pairs, self.out, 1)
        debian_pairs.write_pair_shards(pairs, self.out, 4)

        self.assertEqual(sorted(path.name for path in self.out.glob("shard-*.jsonl")), ["shard-00000.jsonl"])


@unittest.skipUnless(debian_corpus.translation_index_files() if shutil.which("apt-get") else False,
                     "apt's English translation index is not installed")
class CommandLineTest(unittest.TestCase):
    def test_same_lists_give_same_shards(self):
        first, second = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, first)
        self.addCleanup(shutil.rmtree, second)
        script = SCRIPTS_DIR / "debian_pairs.py"

        outputs = [
            json.loads(subprocess.run([sys.executable, str(script), "--out", str(out)],
                                      check=True, capture_output=True, text=True).stdout)
            for out in (first, second)
        ]

        shas = [[entry["sha256"] for entry in output["train"]["inputs"] + output["held-out"]["inputs"]]
                for output in outputs]
        self.assertEqual(shas[0], shas[1])
        self.assertGreater(outputs[0]["train"]["records"], outputs[0]["held-out"]["records"])


if __name__ == "__main__":
    unittest.main()
