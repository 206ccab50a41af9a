#!/usr/bin/env python3
"""Build (summary, long description) training pairs from this machine's apt lists.

Each record is `{"id": <package name>, "anchor": <one-line summary>, "positive": <long
description>}`, for the `contrastive` and `prompt_tune` kernels: a model trained on
them embeds a package's summary close to its own description. The apt data are read
as scripts/debian_corpus.py reads them (package list joined with the English
translation index), and nothing is fetched from the network.

Which packages become pairs:
- a package without a long description is skipped;
- a pair whose summary or description text also belongs to another package is
  dropped, with every other pair that shares that text. Such texts (the summaries
  of transitional or debug-symbol packages, descriptions shared by a library and its
  -dev package) make the correct positive ambiguous for training and for retrieval.

Split: the SHA-256 of the package name, read as a big-endian integer, modulo 100
decides the split: below `--held-out-percent` (default 10) goes to held-out, the rest
to train. Within each split the records are ordered by that hash, so a run of
consecutive records (a task's micro-batch) holds unrelated packages instead of
alphabetical neighbours such as libfoo1 and libfoo-dev. The same apt lists give the
same shards, byte for byte.

Output in OUT: train/shard-NNNNN.jsonl and held-out/shard-NNNNN.jsonl, each folder
with an inputs.json (the manifest `inputs` list: URI, SHA-256 and record count of each
shard). The script prints both lists and the counts as one JSON object.

Usage:
    python3 scripts/debian_pairs.py --out DIR [--held-out-percent 10] [--records-per-shard 1024]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import debian_corpus

log = logging.getLogger("debian_pairs")

DEFAULT_HELD_OUT_PERCENT = 10
# A multiple of the usual micro-batch sizes (16, 32, 64), so that tasks, which never
# span two shards, are full except in the last shard.
DEFAULT_RECORDS_PER_SHARD = 1024
SPLITS = ("train", "held-out")


@dataclass(frozen=True)
class Pair:
    id: str
    anchor: str
    positive: str


def name_hash(name: str) -> int:
    """Return the SHA-256 of a package name as an integer."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big")


def split_of(name: str, held_out_percent: int) -> str:
    """Return the split a package belongs to: "held-out" or "train"."""
    return "held-out" if name_hash(name) % 100 < held_out_percent else "train"


def build_pairs(
    packages: Iterable[dict[str, str]],
    translations: dict[tuple[str, str], str],
) -> list[Pair]:
    """Join package stanzas with translations into pairs, as debian_corpus joins them.

    Only the first stanza of each package name is used. Pairs sharing an anchor or a
    positive text with another pair are dropped, all of them.
    """
    pairs: dict[str, Pair] = {}
    for stanza in packages:
        name = stanza.get("Package", "")
        if not name or name in pairs:
            continue
        summary, inline_text = debian_corpus.split_description(stanza.get("Description", ""))
        translated = translations.get((name, stanza.get("Description-md5", "")))
        long_text = inline_text
        if translated is not None:
            translated_summary, long_text = debian_corpus.split_description(translated)
            summary = summary or translated_summary
        if summary and long_text:
            pairs[name] = Pair(id=name, anchor=summary, positive=long_text)

    anchors = collections.Counter(pair.anchor for pair in pairs.values())
    positives = collections.Counter(pair.positive for pair in pairs.values())
    unique = [
        pair
        for pair in pairs.values()
        if anchors[pair.anchor] == 1 and positives[pair.positive] == 1
    ]
    log.info(
        "%d packages with a summary and a long description, %d left after dropping shared texts",
        len(pairs),
        len(unique),
    )
    return unique


def split_pairs(pairs: list[Pair], held_out_percent: int) -> dict[str, list[Pair]]:
    """Split pairs by package name hash and order each split by that hash."""
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for pair in sorted(pairs, key=lambda pair: name_hash(pair.id)):
        splits[split_of(pair.id, held_out_percent)].append(pair)
    return splits


def encode_pair(pair: Pair) -> bytes:
    record = {"id": pair.id, "anchor": pair.anchor, "positive": pair.positive}
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return (line + "\n").encode("utf-8")


def write_pair_shards(pairs: list[Pair], out_dir: Path, records_per_shard: int) -> list[dict]:
    """Write pairs as JSONL shards and inputs.json, and return the manifest `inputs` list.

    Shards of an earlier run that this run does not write are deleted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()
    inputs = []
    written = set()
    for index, start in enumerate(range(0, len(pairs), records_per_shard)):
        chunk = pairs[start : start + records_per_shard]
        data = b"".join(encode_pair(pair) for pair in chunk)
        path = out_dir / debian_corpus.shard_name(index)
        debian_corpus.write_atomically(path, data)
        written.add(path.name)
        inputs.append(
            {"uri": path.as_uri(), "sha256": hashlib.sha256(data).hexdigest(), "records": len(chunk)}
        )

    pattern = f"{debian_corpus.SHARD_PREFIX}*{debian_corpus.SHARD_SUFFIX}"
    for path in sorted(out_dir.glob(pattern)):
        if path.name not in written:
            log.info("deleting %s, a shard from an earlier run that this run does not produce", path)
            path.unlink()
    inputs_json = (json.dumps(inputs, indent=2) + "\n").encode("utf-8")
    debian_corpus.write_atomically(out_dir / debian_corpus.INPUTS_FILE_NAME, inputs_json)
    return inputs


def build(out_dir: Path, held_out_percent: int, records_per_shard: int) -> dict:
    """Read apt's data, write both splits and return their inputs lists and counts."""
    started = time.monotonic()
    files = debian_corpus.translation_index_files()
    if not files:
        raise RuntimeError(
            "apt's English translation index is missing, so no package has a long "
            f"description to pair with its summary; {debian_corpus.FETCH_TRANSLATIONS_HINT}"
        )
    translations = debian_corpus.read_translations(files)
    pairs = build_pairs(debian_corpus.available_packages(), translations)
    if not pairs:
        raise RuntimeError("no package has both a summary and a long description")

    result: dict = {"held_out_percent": held_out_percent}
    for split, split_pairs_list in split_pairs(pairs, held_out_percent).items():
        inputs = write_pair_shards(split_pairs_list, out_dir / split, records_per_shard)
        result[split] = {"records": len(split_pairs_list), "inputs": inputs}
    log.info(
        "wrote %d train and %d held-out pairs to %s in %.1f s",
        result["train"]["records"],
        result["held-out"]["records"],
        out_dir,
        time.monotonic() - started,
    )
    return result


def percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 99:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 99, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the train/ and held-out/ shards")
    parser.add_argument(
        "--held-out-percent",
        type=percent,
        default=DEFAULT_HELD_OUT_PERCENT,
        help=f"share of packages, by name hash, in the held-out split (default {DEFAULT_HELD_OUT_PERCENT})",
    )
    parser.add_argument(
        "--records-per-shard",
        type=debian_corpus.positive_int,
        default=DEFAULT_RECORDS_PER_SHARD,
        help=f"pairs per JSONL shard (default {DEFAULT_RECORDS_PER_SHARD})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")

    result = build(args.out, args.held_out_percent, args.records_per_shard)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
