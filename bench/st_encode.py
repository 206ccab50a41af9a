#!/usr/bin/env python3
"""Measure sentence-transformers' encode as the Python side of bench/embed_throughput.py.

Reads a JSONL file of {"text": ...} lines, embeds the first text, then encodes
the whole file `--repeats` times (in calls of `--slice-size` texts), and prints one JSON object on stdout in the
same form as the Rust program kernels/examples/embed_bench.rs.
"""

import argparse
import json
import os
import time

# Set before sentence-transformers is imported so that it never contacts the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="sentence-transformers model directory")
    parser.add_argument("--input", required=True, help="JSONL file with one {\"text\": ...} per line")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--max-seq-len", type=int, default=256,
                        help="maximum tokens per text, special tokens included")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the whole input")
    parser.add_argument("--slice-size", type=int, default=0,
                        help="texts per encode call within a pass, each call timed on its own; "
                             "0 encodes the whole input in one call")
    parser.add_argument("--first-only", action="store_true",
                        help="exit after the first embedding, for cold-start runs")
    return parser.parse_args()


def main() -> None:
    started = time.perf_counter()
    args = parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    with open(args.input, encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]

    model = SentenceTransformer(args.model_dir, device="cpu")
    model.max_seq_length = args.max_seq_len
    load_secs = time.perf_counter() - started

    encode_options = {"batch_size": args.batch_size, "show_progress_bar": False}
    model.encode([texts[0]], **encode_options)
    first_embedding_unix_secs = time.time()
    first_embedding_secs = time.perf_counter() - started

    report = {
        "implementation": "sentence-transformers",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_seq_len": model.max_seq_length,
        "load_secs": load_secs,
        "first_embedding_secs": first_embedding_secs,
        "first_embedding_unix_secs": first_embedding_unix_secs,
    }
    if args.first_only:
        print(json.dumps(report))
        return

    token_count = sum(
        len(ids) for ids in model.tokenizer(
            texts, truncation="longest_first", max_length=model.max_seq_length
        )["input_ids"]
    )

    # Warm-up over two batches, as the Rust side does.
    model.encode(texts[: 2 * args.batch_size], **encode_options)

    slice_size = args.slice_size or len(texts)
    run_slice_secs = []
    for _ in range(args.repeats):
        slice_secs = []
        for start in range(0, len(texts), slice_size):
            texts_slice = texts[start:start + slice_size]
            slice_started = time.perf_counter()
            embeddings = model.encode(texts_slice, **encode_options)
            slice_secs.append(time.perf_counter() - slice_started)
            if embeddings.shape[0] != len(texts_slice):
                raise SystemExit(f"expected {len(texts_slice)} rows, got {embeddings.shape[0]}")
        run_slice_secs.append(slice_secs)

    report.update({
        "texts": len(texts),
        "tokens": token_count,
        "run_secs": [sum(slice_secs) for slice_secs in run_slice_secs],
        "run_slice_secs": run_slice_secs,
    })
    print(json.dumps(report))


if __name__ == "__main__":
    main()
