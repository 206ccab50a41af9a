#!/usr/bin/env python3
"""Time the contrastive kernel's step in PyTorch: forward and backward of in-batch InfoNCE.

The PyTorch side of bench/train_throughput.py. It runs Hugging Face's BertModel
(all-MiniLM-L6-v2, eval mode so no dropout, SDPA attention) on the CPU and computes
what kernels/examples/train_bench.rs computes per step: tokenize the batch's anchors
and positives (each padded to its own longest text), mean-pool over the attention
mask, L2-normalise, logits = anchors · positivesᵀ / 0.05, cross-entropy against each
anchor's own positive, backward. Only the parameters of `--trainable` require
gradients. Gradients are dropped after each step, as optimizer.zero_grad() does.
Prints one JSON object on stdout.

Usage:
    python bench/train_torch.py --model-dir DIR --input pairs.jsonl --threads 2 [--batch-size 32]
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

TEMPERATURE = 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="model directory")
    parser.add_argument("--input", required=True, help="JSONL file of {\"anchor\", \"positive\"} pairs")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads")
    parser.add_argument("--max-seq-len", type=int, default=128, help="maximum tokens per text")
    parser.add_argument("--trainable", default="2", help="`all`, or the number of top layers that train")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--round-tasks", type=int, default=0, help="ignored; the Rust side's round size")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with open(args.input, encoding="utf-8") as lines:
        pairs = [json.loads(line) for line in lines]

    load_started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModel.from_pretrained(args.model_dir, attn_implementation="sdpa").eval()
    load_secs = time.perf_counter() - load_started

    layers = model.config.num_hidden_layers
    for name, parameter in model.named_parameters():
        if args.trainable == "all":
            trains = not name.startswith("pooler.")
        else:
            lowest = layers - int(args.trainable)
            trains = any(name.startswith(f"encoder.layer.{index}.") for index in range(lowest, layers))
        parameter.requires_grad_(trains)

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=args.max_seq_len, return_tensors="pt")
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)

    def step(index: int) -> float:
        batch = [pairs[(index * args.batch_size + offset) % len(pairs)] for offset in range(args.batch_size)]
        anchors = encode([pair["anchor"] for pair in batch])
        positives = encode([pair["positive"] for pair in batch])
        logits = anchors @ positives.T / TEMPERATURE
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(batch)))
        loss.backward()
        for parameter in model.parameters():
            parameter.grad = None
        return loss.item()

    for index in range(args.warmup):
        step(index)
    step_secs = []
    for index in range(args.steps):
        started = time.perf_counter()
        step(args.warmup + index)
        step_secs.append(time.perf_counter() - started)

    print(json.dumps({
        "batch_size": args.batch_size,
        "threads": args.threads,
        "max_seq_len": args.max_seq_len,
        "trainable": args.trainable,
        "load_secs": load_secs,
        "step_secs": step_secs,
    }))


if __name__ == "__main__":
    main()
