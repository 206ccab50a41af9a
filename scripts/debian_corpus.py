#!/usr/bin/env python3
"""Build the demo corpus from this machine's apt lists: one record per Debian package.

Each record is `{"id": <package name>, "text": <description>}`. On Debian 12,
`apt-cache dumpavail` gives each package's one-line summary and a `Description-md5`.
The long descriptions are in apt's English translation index (`Translation-en`
files), whose stanzas contain `Package`, `Description-md5` and `Description-en`. The
two sources are joined on package name and MD5. Nothing is fetched from the network.
When the translation index is missing, the records contain only the summaries, and a
warning names the command that fetches the index.

The records are sorted by package name and written as JSONL shards. The script prints
the manifest `inputs` list (URI, SHA-256 and record count of each shard) and also
writes it to `inputs.json` in the output folder. The same apt lists give the same
shards, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("debian_corpus")

DEFAULT_LIMIT = 3000
DEFAULT_RECORDS_PER_SHARD = 500
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".jsonl"
INPUTS_FILE_NAME = "inputs.json"
APT_HELPER = "/usr/lib/apt/apt-helper"

# The Acquire::Languages override matters because Debian's container images set it
# to "none", and then apt lists no translation files even when they are on disk.
TRANSLATION_INDEX_COMMAND = [
    "apt-get",
    "-o",
    "Acquire::Languages=en",
    "indextargets",
    "--format",
    "$(FILENAME)",
    "Identifier: Translations",
    "Language: en",
]
FETCH_TRANSLATIONS_HINT = (
    "run `apt-get -o Acquire::Languages=en update` or scripts/install-deps.sh to fetch it"
)


@dataclass(frozen=True)
class Record:
    id: str
    text: str


@dataclass
class CorpusStats:
    """Counts of where the records' long descriptions came from."""

    packages: int = 0
    from_translation: int = 0
    from_package_list: int = 0
    summary_only: int = 0


# ---------------------------------------------------------------------------
# Parsing


def parse_stanzas(lines: Iterable[str], fields: set[str]) -> Iterator[dict[str, str]]:
    """Parse deb822 stanzas (RFC 822 style paragraphs separated by blank lines).

    Yields one dict per stanza with only the requested fields. A multi-line value
    keeps its continuation lines, including their leading space, joined by "\\n".
    """
    stanza: dict[str, str] = {}
    current: str | None = None
    for raw_line in lines:
        line = raw_line.rstrip("\n")
        if not line.strip():
            if stanza:
                yield stanza
            stanza, current = {}, None
        elif line[0] in " \t":
            if current is not None:
                stanza[current] += "\n" + line
        else:
            name, separator, value = line.partition(":")
            current = name if separator and name in fields else None
            if current is not None:
                stanza[current] = value.strip()
    if stanza:
        yield stanza


def undo_description_format(lines: Iterable[str]) -> str:
    """Turn the continuation lines of a Debian description into plain text.

    Debian Policy section 5.6.13 (the Description field) defines the format. Each
    line starts with a space, a line that is only " ." separates paragraphs, and a
    line that starts with two or more spaces is shown verbatim (lists, code).
    Ordinary lines are word-wrapped text and are joined with spaces. The result
    separates paragraphs with a blank line and keeps verbatim lines on their own
    lines without their indentation.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    wrapped: list[str] = []

    def end_wrapped_text() -> None:
        if wrapped:
            current.append(" ".join(wrapped))
            wrapped.clear()

    def end_paragraph() -> None:
        end_wrapped_text()
        if current:
            paragraphs.append("\n".join(current))
            current.clear()

    for line in lines:
        line = line.rstrip()
        if line.strip() == ".":
            end_paragraph()
        elif line.startswith("  ") or line.startswith("\t"):
            end_wrapped_text()
            current.append(line.strip())
        elif line.strip():
            wrapped.append(line.strip())
    end_paragraph()
    return "\n\n".join(paragraphs)


def split_description(value: str) -> tuple[str, str]:
    """Split a Description field value into the summary and the plain long text."""
    summary, _, rest = value.partition("\n")
    return summary.strip(), undo_description_format(rest.split("\n") if rest else [])


def record_text(summary: str, long_description: str) -> str:
    """Join the summary and the long description into one text.

    The summary gets a full stop before the long text unless it already ends with one.
    """
    if not long_description:
        return summary
    if not summary:
        return long_description
    separator = " " if summary.endswith(".") else ". "
    return summary + separator + long_description


# ---------------------------------------------------------------------------
# Reading apt data


def run_lines(command: list[str]) -> Iterator[str]:
    """Yield the standard output lines of a command, raising if it fails."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, encoding="utf-8", errors="replace"
    ) as process:
        assert process.stdout is not None
        yield from process.stdout
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}")


def translation_index_files() -> list[str]:
    """Return the paths of apt's English translation files that exist on disk."""
    output = subprocess.run(
        TRANSLATION_INDEX_COMMAND, check=True, capture_output=True, encoding="utf-8"
    ).stdout
    return [line for line in output.splitlines() if line]


def read_translations(files: list[str]) -> dict[tuple[str, str], str]:
    """Map (package, Description-md5) to the Description-en value.

    apt-helper decompresses the files, which apt may keep as .lz4, .gz or .xz. When
    several files contain the same key, the first one read wins. The text is the
    same anyway because the key includes its MD5.
    """
    translations: dict[tuple[str, str], str] = {}
    fields = {"Package", "Description-md5", "Description-en"}
    for path in files:
        lines = run_lines([APT_HELPER, "cat-file", path])
        for stanza in parse_stanzas(lines, fields):
            key = (stanza.get("Package", ""), stanza.get("Description-md5", ""))
            if all(key) and "Description-en" in stanza:
                translations.setdefault(key, stanza["Description-en"])
    return translations


def available_packages() -> Iterator[dict[str, str]]:
    """Yield the Package, Description and Description-md5 of each package in apt's lists."""
    fields = {"Package", "Description", "Description-md5"}
    return parse_stanzas(run_lines(["apt-cache", "dumpavail"]), fields)


# ---------------------------------------------------------------------------
# Building records


def build_records(
    packages: Iterable[dict[str, str]],
    translations: dict[tuple[str, str], str],
) -> tuple[list[Record], CorpusStats]:
    """Join package stanzas with translations into one record per package, sorted by id.

    The long description comes from the translation index when package and MD5 match.
    Otherwise it comes from the package stanza itself, which has one when the package
    comes from a repository that publishes no translation index or was installed
    locally. Otherwise the record is the summary alone. Only the first stanza of
    each package name is used.
    """
    records: dict[str, Record] = {}
    stats = CorpusStats()
    for stanza in packages:
        name = stanza.get("Package", "")
        if not name or name in records:
            continue
        summary, inline_text = split_description(stanza.get("Description", ""))
        translated = translations.get((name, stanza.get("Description-md5", "")))
        if translated is not None:
            translated_summary, long_text = split_description(translated)
            summary = summary or translated_summary
            stats.from_translation += 1
        elif inline_text:
            long_text = inline_text
            stats.from_package_list += 1
        else:
            long_text = ""
            stats.summary_only += 1
        text = record_text(summary, long_text)
        if text:
            records[name] = Record(id=name, text=text)
    stats.packages = len(records)
    return sorted(records.values(), key=lambda record: record.id), stats


def sample_evenly(records: list[Record], limit: int | None) -> list[Record]:
    """Take `limit` records spread evenly over the sorted list, so the sample spans the alphabet.

    Record i of the sample is record floor(i * len / limit) of the input. Returns all
    records when `limit` is None or at least their number.
    """
    if limit is None or limit >= len(records):
        return list(records)
    return [records[i * len(records) // limit] for i in range(limit)]


# ---------------------------------------------------------------------------
# Writing shards


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}{SHARD_SUFFIX}"


def encode_record(record: Record) -> bytes:
    line = json.dumps({"id": record.id, "text": record.text}, ensure_ascii=False, separators=(",", ":"))
    return (line + "\n").encode("utf-8")


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_shards(records: list[Record], out_dir: Path, records_per_shard: int) -> list[dict]:
    """Write the records as JSONL shards and return the manifest `inputs` entries.

    Shards left in `out_dir` by an earlier run with more shards are deleted, so the
    folder contains exactly the listed shards. Other files are left alone.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be at least 1, got {records_per_shard}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()

    inputs = []
    written = set()
    for index, start in enumerate(range(0, len(records), records_per_shard)):
        chunk = records[start : start + records_per_shard]
        data = b"".join(encode_record(record) for record in chunk)
        path = out_dir / shard_name(index)
        write_atomically(path, data)
        written.add(path.name)
        inputs.append(
            {
                "uri": path.as_uri(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": len(chunk),
            }
        )

    for path in sorted(out_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):
        if path.name not in written:
            log.info("deleting %s, a shard from an earlier run that this run does not produce", path)
            path.unlink()
    return inputs


def build_corpus(out_dir: Path, limit: int | None, records_per_shard: int) -> list[dict]:
    """Read apt's data, write the shards and inputs.json, and return the inputs list.

    `limit` None takes every package.
    """
    started = time.monotonic()
    files = translation_index_files()
    if files:
        translations = read_translations(files)
        log.info("read %d translations from %d files", len(translations), len(files))
    else:
        translations = {}
        log.warning(
            "apt's English translation index is missing, so records contain only the "
            "one-line summaries; %s",
            FETCH_TRANSLATIONS_HINT,
        )

    records, stats = build_records(available_packages(), translations)
    if not records:
        raise RuntimeError("apt-cache dumpavail listed no packages; run `apt-get update` first")
    log.info(
        "%d packages: %d with a translated long description, %d with one from the "
        "package list, %d with the summary alone",
        stats.packages,
        stats.from_translation,
        stats.from_package_list,
        stats.summary_only,
    )

    sample = sample_evenly(records, limit)
    inputs = write_shards(sample, out_dir, records_per_shard)
    write_atomically(out_dir / INPUTS_FILE_NAME, (json.dumps(inputs, indent=2) + "\n").encode())
    log.info(
        "wrote %d records in %d shards to %s in %.1f s",
        len(sample),
        len(inputs),
        out_dir,
        time.monotonic() - started,
    )
    return inputs


# ---------------------------------------------------------------------------
# Command line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --limit and --all, shared with prepare_demo.py."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"number of packages to take, spread evenly over the sorted names (default {DEFAULT_LIMIT})",
    )
    group.add_argument("--all", action="store_true", help="take every package instead of --limit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards and inputs.json")
    add_selection_arguments(parser)
    parser.add_argument(
        "--records-per-shard",
        type=positive_int,
        default=DEFAULT_RECORDS_PER_SHARD,
        help=f"records per JSONL shard (default {DEFAULT_RECORDS_PER_SHARD})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")

    inputs = build_corpus(args.out, None if args.all else args.limit, args.records_per_shard)
    json.dump(inputs, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
