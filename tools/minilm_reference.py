#!/usr/bin/env python3
"""Reference embeddings of the real all-MiniLM-L6-v2 from sentence-transformers, for
crates/kiln-engine/tests/minilm.rs.

Writes tests/fixtures/minilm/:
  reference.json         versions, the sentences, each sentence's token ids (as the model's
                         tokenizer gives them after sentence-transformers' truncation to
                         max_seq_length 256), and notes
  reference.safetensors  embeddings F32 [n_sentences, 384]: model.encode(sentences,
                         batch_size=8, normalize_embeddings=False) — the checkpoint's modules.json
                         already ends with Normalize, so the rows have unit norm

The model directory is models/all-MiniLM-L6-v2 (scripts/fetch-models.sh), or --model PATH.
f32, CPU, one thread, deterministic. Run from the repository root:
    python tools/minilm_reference.py
"""

import argparse
import json
import os

import numpy as np
import sentence_transformers
import torch
import transformers
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "minilm")

LONG = " ".join(
    ["The GNU General Public License is a free, copyleft license for software and other kinds of "
     "works, and it guarantees the freedom to share and change all versions of a program."] * 14)

SENTENCES = [
    "Hello world",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "What's the weather like in Zürich tomorrow?!",
    "Ünïcödé, naïve café, façade — déjà vu…",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love pizza 🍕🍕 and emojis 😀!",
    "!!!???...",
    "",
    "a",
    "e-mail: someone@example.com, URL: https://example.org/path?q=1&r=2#frag",
    "Numbers like 3.14159, 2,718 and 1e-9 are tokenized into pieces.",
    "   leading and trailing spaces   ",
    "Tabs\tand\nnewlines inside a sentence.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "This sentence is deliberately quite a bit longer than the others, so that the batch holds "
    "sequences of very different lengths, which must not change anybody's embedding at all.",
    LONG,
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = SentenceTransformer(a.model, device="cpu")
    model.eval()
    emb = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    assert emb.shape == (len(SENTENCES), 384), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms
    feats = model.tokenize(SENTENCES)
    ids = []
    for row, mask in zip(feats["input_ids"].tolist(), feats["attention_mask"].tolist()):
        ids.append([i for i, m in zip(row, mask) if m])
    assert len(ids[-1]) == model.max_seq_length, len(ids[-1])  # LONG is truncated
    os.makedirs(OUT, exist_ok=True)
    save_file({"embeddings": emb}, os.path.join(OUT, "reference.safetensors"))
    ref = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "modules": [type(m).__name__ for m in model],
        "notes": "model.encode(batch_size=8, normalize_embeddings=False); Pooling mean + Normalize "
                 "from modules.json. The last sentence has more than max_seq_length tokens and is "
                 "truncated by sentence-transformers (token_ids show the kept ids).",
        "sentences": SENTENCES,
        "token_ids": ids,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", len(SENTENCES), "embeddings; token counts", [len(i) for i in ids])


if __name__ == "__main__":
    main()
