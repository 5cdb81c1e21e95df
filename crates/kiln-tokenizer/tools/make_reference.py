#!/usr/bin/env python3
"""Build tests/fixtures/smollm2_gguf_ids.json: the reference token ids, decodes and chat-template
renderings that Hugging Face transformers' GGUF tokenizer gives for SmolLM2's GGUF.

transformers is the reference (not llama.cpp): the test in tests/smollm2_gguf.rs asserts that
kiln-tokenizer's `Tokenizer::from_gguf` gives identical ids.

Usage (from the workspace root, with a venv holding transformers + gguf):
    python crates/kiln-tokenizer/tools/make_reference.py \
        [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf] [--text /usr/share/common-licenses/GPL-3]
Tested with transformers 5.24.0, tokenizers 0.23.3, gguf 0.19.0.
"""

import argparse
import hashlib
import json
import os
import re

import tokenizers
import transformers
from transformers import AutoTokenizer

STRINGS = [
    "Hello world",
    " Hello world",
    "  Hello  world  ",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces     inside",
    "",
    " ",
    "\n",
    "line one\nline two\n\nline four\n",
    "\r\nwindows\r\nnewlines",
    "tabs\tand\t\tdouble tabs\t",
    "1234567",
    "x = 1234567890 + 42",
    " 123 4567 89",
    "spaces before digits  1  22   333",
    "\n\n123\t\t456",
    "3.14159 and 2,718",
    "don't I'll we've they're she's he'd I'M",
    "DON'T SHOUT",
    "naïve café résumé",
    "日本語のテキスト",
    "🙂",
    "emoji 🙂👍🏽 family 👨‍👩‍👧",
    "Ünïcödé ñ ß Ω ж ק ا",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "word<|endoftext|>word",
    "in<|im_end|>side",
    "<|endoftext|>",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "< |im_start| >",
    "<repo_name>kiln<file_sep>main.rs",
    "http://example.com/path?q=1&r=2#frag",
    "email@example.com",
    "!!!???...,,,;;;",
    "A\u00a0non-breaking\u2009thin space",
    "zero\u200bwidth",
    "mixed 中文 and English 123",
    "The quick brown fox jumps over the lazy dog.",
    "'quoted' \"double\" `backtick`",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Arr, 4."},
        {"role": "user", "content": "  And 3+3?  "},
    ],
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", "..", ".."))
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "smollm2_gguf_ids.json"))
    parser.add_argument("--dump-backend", help="also write the backend tokenizer.json here")
    args = parser.parse_args()

    gguf = os.path.realpath(args.gguf)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    if args.dump_backend:
        with open(args.dump_backend, "w") as f:
            f.write(tok.backend_tokenizer.to_str(pretty=True))

    def entry(text):
        plain = tok(text, add_special_tokens=False)["input_ids"]
        default = tok(text)["input_ids"]
        return {
            "text": text,
            "ids": plain,
            "ids_default": default,
            "decoded": tok.decode(plain),
            "decoded_skip_special": tok.decode(plain, skip_special_tokens=True),
        }

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    big = entry(text)
    del big["text"]
    big["file"] = args.text
    big["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    big["decoded_equals_text"] = big.pop("decoded") == text
    del big["decoded_skip_special"]

    chats = []
    for messages in CONVERSATIONS:
        for gen in (False, True):
            chats.append({
                "messages": messages,
                "add_generation_prompt": gen,
                "rendered": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen),
            })

    out = {
        "generator": "crates/kiln-tokenizer/tools/make_reference.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "gguf": os.path.basename(gguf),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "vocab_size": len(tok),
        "strings": [entry(s) for s in STRINGS],
        "long_text": big,
        "chat": chats,
    }
    text = json.dumps(out, ensure_ascii=False, indent=1)
    # Keep id lists on one line each: readable diffs without a line per id.
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
