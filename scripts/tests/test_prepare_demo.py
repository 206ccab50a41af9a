"""Tests for scripts/prepare_demo.py. Run: python3 -m unittest discover -s scripts/tests"""

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

import prepare_demo  # noqa: E402


def sha256sum_model_digest(model_dir: Path) -> str:
    """Compute the model digest with coreutils, as the manifest documentation defines it."""
    listing = subprocess.run(
        ["sha256sum", "config.json", "model.safetensors", "tokenizer.json"],
        cwd=model_dir,
        check=True,
        capture_output=True,
    ).stdout
    return hashlib.sha256(listing).hexdigest()


def make_model_dir(parent: Path) -> Path:
    model_dir = parent / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 384}\n')
    (model_dir / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (model_dir / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (model_dir / "vocab.txt").write_text("[PAD]\n")
    return model_dir


class ModelDigestTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def test_matches_sha256sum_listing(self):
        model_dir = make_model_dir(self.dir)
        self.assertEqual(prepare_demo.model_digest(model_dir), sha256sum_model_digest(model_dir))

    def test_ignores_other_files(self):
        model_dir = make_model_dir(self.dir)
        before = prepare_demo.model_digest(model_dir)
        (model_dir / "vocab.txt").write_text("changed\n")
        self.assertEqual(prepare_demo.model_digest(model_dir), before)

    def test_missing_file_is_named(self):
        model_dir = make_model_dir(self.dir)
        (model_dir / "tokenizer.json").unlink()
        with self.assertRaisesRegex(FileNotFoundError, "tokenizer.json"):
            prepare_demo.model_digest(model_dir)

    @unittest.skipUnless(prepare_demo.DEFAULT_MODEL_DIR.is_dir(), "needs the installed all-MiniLM-L6-v2 model")
    def test_installed_model_matches_sha256sum(self):
        model_dir = prepare_demo.DEFAULT_MODEL_DIR
        self.assertEqual(prepare_demo.model_digest(model_dir), sha256sum_model_digest(model_dir))


@unittest.skipUnless(shutil.which("apt-cache"), "needs apt-cache")
class PrepareDemoTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.model_dir = make_model_dir(self.dir)
        self.worker = self.dir / "spillway-worker"
        self.worker.write_bytes(b"#!/bin/sh\nexit 0\n")
        self.worker.chmod(0o755)
        self.store = self.dir / "store"

    def run_script(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPTS_DIR / "prepare_demo.py"), "--store", str(self.store),
             "--worker-binary", str(self.worker), "--model-dir", str(self.model_dir), *extra],
            capture_output=True, text=True,
        )

    def test_writes_manifest(self):
        result = self.run_script("--limit", "70", "--records-per-shard", "50", "--records-per-task", "8")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), str(self.store / "manifest.json"))

        manifest = json.loads((self.store / "manifest.json").read_text())
        self.assertEqual(manifest["version"], 1)
        self.assertEqual(manifest["name"], "debian-descriptions")
        self.assertEqual(manifest["kernel"], {"name": "embed", "max_seq_len": 256})
        self.assertEqual(manifest["model"]["uri"], self.model_dir.as_uri() + "/")
        self.assertEqual(manifest["model"]["sha256"], sha256sum_model_digest(self.model_dir))
        self.assertEqual(manifest["records_per_task"], 8)
        self.assertEqual(manifest["output"], (self.store / "out").as_uri() + "/")
        self.assertEqual(manifest["worker"], {"binary_sha256": hashlib.sha256(self.worker.read_bytes()).hexdigest()})
        self.assertEqual(manifest["gpus_per_worker"], 0)
        self.assertEqual(manifest["max_attempts"], 3)
        self.assertEqual(manifest["labels"], {"source": "debian"})

        inputs = manifest["inputs"]
        self.assertEqual([entry["records"] for entry in inputs], [50, 20])
        self.assertEqual(inputs, json.loads((self.store / "inputs" / "debian" / "inputs.json").read_text()))
        for entry in inputs:
            path = Path(entry["uri"].removeprefix("file://"))
            self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), entry["sha256"])

    def test_missing_worker_binary_fails(self):
        self.worker.unlink()
        result = self.run_script("--limit", "5")
        self.assertEqual(result.returncode, 1)
        self.assertIn("worker binary", result.stderr)
        self.assertFalse((self.store / "manifest.json").exists())

    def test_missing_model_file_fails(self):
        (self.model_dir / "model.safetensors").unlink()
        result = self.run_script("--limit", "5")
        self.assertEqual(result.returncode, 1)
        self.assertIn("model.safetensors", result.stderr)
        self.assertFalse((self.store / "manifest.json").exists())

    def test_records_per_task_out_of_range_fails(self):
        result = self.run_script("--records-per-task", "0")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--records-per-task", result.stderr)


if __name__ == "__main__":
    unittest.main()
