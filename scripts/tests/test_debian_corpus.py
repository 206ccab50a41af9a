"""Tests for scripts/debian_corpus.py. Run: python3 -m unittest discover -s scripts/tests"""

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
from debian_corpus import Record  # noqa: E402

PACKAGE_LIST = """\
Package: beta
Version: 1.0
Description: second package
Description-md5: 22222222222222222222222222222222
Tag: role::program,
 use::testing

Package: alpha
Description: first package.
Description-md5: 11111111111111111111111111111111

Package: gamma
Description: third package
Description-md5: 33333333333333333333333333333333

Package: local-only
Description: installed from a local file
 This long description comes from the package stanza.
Homepage: https://example.invalid

Package: alpha
Description: a second stanza for alpha that must be ignored
Description-md5: 44444444444444444444444444444444
"""

TRANSLATIONS = """\
Package: alpha
Description-md5: 11111111111111111111111111111111
Description-en: first package.
 Alpha does one thing
 and does it well.
 .
 It has a list:
  * one
  * two

Package: beta
Description-md5: 22222222222222222222222222222222
Description-en: second package
 Beta's long text.

Package: gamma
Description-md5: ffffffffffffffffffffffffffffffff
Description-en: third package, an older version
 This text belongs to another version and must not be used.
"""


def parse(text: str, fields: set[str]) -> list[dict[str, str]]:
    return list(debian_corpus.parse_stanzas(text.splitlines(keepends=True), fields))


def translations_of(text: str) -> dict[tuple[str, str], str]:
    stanzas = parse(text, {"Package", "Description-md5", "Description-en"})
    return {(s["Package"], s["Description-md5"]): s["Description-en"] for s in stanzas}


class ParseStanzasTest(unittest.TestCase):
    def test_keeps_only_requested_fields(self):
        stanzas = parse(PACKAGE_LIST, {"Package", "Description-md5"})
        self.assertEqual(len(stanzas), 5)
        self.assertEqual(stanzas[0], {"Package": "beta", "Description-md5": "2" * 32})

    def test_multiline_value_keeps_continuation_lines(self):
        stanzas = parse(PACKAGE_LIST, {"Tag"})
        self.assertEqual(stanzas[0]["Tag"], "role::program,\n use::testing")

    def test_last_stanza_without_blank_line(self):
        stanzas = parse("Package: a\n\nPackage: b", {"Package"})
        self.assertEqual([s["Package"] for s in stanzas], ["a", "b"])


class UndoDescriptionFormatTest(unittest.TestCase):
    def test_joins_wrapped_lines(self):
        text = debian_corpus.undo_description_format([" one two", " three"])
        self.assertEqual(text, "one two three")

    def test_dot_line_separates_paragraphs(self):
        text = debian_corpus.undo_description_format([" first", " .", " second"])
        self.assertEqual(text, "first\n\nsecond")

    def test_verbatim_lines_stay_separate(self):
        text = debian_corpus.undo_description_format([" List:", "  * one", "  * two", " after"])
        self.assertEqual(text, "List:\n* one\n* two\nafter")

    def test_line_starting_with_dot_word_is_text(self):
        text = debian_corpus.undo_description_format([" reads", " .cabal files"])
        self.assertEqual(text, "reads .cabal files")

    def test_repeated_dot_lines_make_no_empty_paragraphs(self):
        text = debian_corpus.undo_description_format([" .", " a", " .", " .", " b", " ."])
        self.assertEqual(text, "a\n\nb")


class RecordTextTest(unittest.TestCase):
    def test_adds_full_stop_after_summary(self):
        self.assertEqual(debian_corpus.record_text("tool", "Long."), "tool. Long.")

    def test_keeps_existing_full_stop(self):
        self.assertEqual(debian_corpus.record_text("tool.", "Long."), "tool. Long.")

    def test_summary_alone(self):
        self.assertEqual(debian_corpus.record_text("tool", ""), "tool")


class BuildRecordsTest(unittest.TestCase):
    def setUp(self):
        packages = parse(PACKAGE_LIST, {"Package", "Description", "Description-md5"})
        self.records, self.stats = debian_corpus.build_records(packages, translations_of(TRANSLATIONS))
        self.by_id = {record.id: record.text for record in self.records}

    def test_one_record_per_package_sorted(self):
        self.assertEqual([r.id for r in self.records], ["alpha", "beta", "gamma", "local-only"])

    def test_first_stanza_of_duplicate_wins(self):
        self.assertTrue(self.by_id["alpha"].startswith("first package."))

    def test_joins_translation_on_package_and_md5(self):
        self.assertEqual(
            self.by_id["alpha"],
            "first package. Alpha does one thing and does it well.\n\nIt has a list:\n* one\n* two",
        )
        self.assertEqual(self.by_id["beta"], "second package. Beta's long text.")

    def test_md5_mismatch_gives_summary_only(self):
        self.assertEqual(self.by_id["gamma"], "third package")

    def test_inline_description_used_without_translation(self):
        self.assertEqual(
            self.by_id["local-only"],
            "installed from a local file. This long description comes from the package stanza.",
        )

    def test_stats_count_sources(self):
        self.assertEqual(self.stats.packages, 4)
        self.assertEqual(self.stats.from_translation, 2)
        self.assertEqual(self.stats.from_package_list, 1)
        self.assertEqual(self.stats.summary_only, 1)

    def test_no_translations_gives_summaries(self):
        packages = parse(PACKAGE_LIST, {"Package", "Description", "Description-md5"})
        records, stats = debian_corpus.build_records(packages, {})
        self.assertEqual(records[1].text, "second package")
        self.assertEqual(stats.summary_only, 3)


class SampleEvenlyTest(unittest.TestCase):
    def setUp(self):
        self.records = [Record(id=f"p{i:03d}", text="t") for i in range(100)]

    def test_takes_every_kth_record(self):
        sample = debian_corpus.sample_evenly(self.records, 10)
        self.assertEqual([r.id for r in sample], [f"p{i:03d}" for i in range(0, 100, 10)])

    def test_uneven_ratio_spans_the_list(self):
        sample = debian_corpus.sample_evenly(self.records, 7)
        self.assertEqual(len(sample), 7)
        self.assertEqual(sample[0].id, "p000")
        self.assertGreaterEqual(sample[-1].id, "p085")
        self.assertEqual(len({r.id for r in sample}), 7)

    def test_limit_above_size_takes_all(self):
        self.assertEqual(debian_corpus.sample_evenly(self.records, 1000), self.records)

    def test_no_limit_takes_all(self):
        self.assertEqual(debian_corpus.sample_evenly(self.records, None), self.records)


def sha256sum_listing(paths: list[Path]) -> dict[str, str]:
    """Run sha256sum on the files and return {file name: hex digest}."""
    output = subprocess.run(["sha256sum", *map(str, paths)], check=True, capture_output=True, text=True).stdout
    digests = {}
    for line in output.splitlines():
        digest, path = line.split("  ", 1)
        digests[Path(path).name] = digest
    return digests


class WriteShardsTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.records = [Record(id=f"pkg{i}", text=f"text {i} \u00e9\n\"quoted\"") for i in range(7)]

    def test_shard_sizes_and_uris(self):
        inputs = debian_corpus.write_shards(self.records, self.dir, 3)
        self.assertEqual([entry["records"] for entry in inputs], [3, 3, 1])
        self.assertEqual(inputs[0]["uri"], (self.dir.resolve() / "shard-00000.jsonl").as_uri())
        self.assertTrue(inputs[2]["uri"].startswith("file:///"))

    def test_sha256_matches_sha256sum(self):
        inputs = debian_corpus.write_shards(self.records, self.dir, 3)
        paths = sorted(self.dir.glob("shard-*.jsonl"))
        self.assertEqual(len(paths), 3)
        digests = sha256sum_listing(paths)
        for entry in inputs:
            name = entry["uri"].rsplit("/", 1)[1]
            self.assertEqual(entry["sha256"], digests[name], name)

    def test_lines_are_records_in_order(self):
        debian_corpus.write_shards(self.records, self.dir, 3)
        lines = (self.dir / "shard-00001.jsonl").read_text(encoding="utf-8").splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual(json.loads(lines[0]), {"id": "pkg3", "text": "text 3 \u00e9\n\"quoted\""})

    def test_deletes_stale_shards_only(self):
        (self.dir / "shard-00009.jsonl").write_text("old\n")
        (self.dir / "notes.txt").write_text("keep\n")
        debian_corpus.write_shards(self.records, self.dir, 5)
        self.assertEqual(
            sorted(p.name for p in self.dir.iterdir()),
            ["notes.txt", "shard-00000.jsonl", "shard-00001.jsonl"],
        )

    def test_rejects_zero_records_per_shard(self):
        with self.assertRaises(ValueError):
            debian_corpus.write_shards(self.records, self.dir, 0)


@unittest.skipUnless(shutil.which("apt-cache"), "needs apt-cache")
class AptCorpusTest(unittest.TestCase):
    """Runs the script on this machine's apt lists."""

    def test_cli_limit_is_deterministic(self):
        outputs = []
        for _ in range(2):
            out_dir = Path(tempfile.mkdtemp())
            self.addCleanup(shutil.rmtree, out_dir)
            result = subprocess.run(
                [sys.executable, str(SCRIPTS_DIR / "debian_corpus.py"), "--out", str(out_dir),
                 "--limit", "40", "--records-per-shard", "16"],
                check=True, capture_output=True, text=True,
            )
            inputs = json.loads(result.stdout)
            self.assertEqual(inputs, json.loads((out_dir / "inputs.json").read_text()))
            self.assertEqual([entry["records"] for entry in inputs], [16, 16, 8])
            digests = sha256sum_listing(sorted(out_dir.glob("shard-*.jsonl")))
            for entry in inputs:
                self.assertEqual(entry["sha256"], digests[entry["uri"].rsplit("/", 1)[1]])
            outputs.append([entry["sha256"] for entry in inputs])
        self.assertEqual(outputs[0], outputs[1])

    def test_records_are_sorted_and_unique(self):
        out_dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out_dir)
        debian_corpus.build_corpus(out_dir, 200, 500)
        lines = (out_dir / "shard-00000.jsonl").read_text(encoding="utf-8").splitlines()
        ids = [json.loads(line)["id"] for line in lines]
        self.assertEqual(len(ids), 200)
        self.assertEqual(ids, sorted(set(ids)))
        self.assertTrue(all(json.loads(line)["text"] for line in lines))


if __name__ == "__main__":
    unittest.main()
