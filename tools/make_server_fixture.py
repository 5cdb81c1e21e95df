"""Tokenizer files for tests/fixtures/server_llama: the tiny random-weight llama fixture
(tests/fixtures/llama, vocab 512, context 128) made servable by `kiln serve`.

A byte-level BPE without merges: ids 0..2 are <unk>, <s>, </s> (the llama fixture's bos 1 and
eos 2), ids 3..258 the 256 byte-level characters, so any text encodes and every id decodes. A
ChatML-style chat template lets the chat endpoint run. The model files are symlinks to
tests/fixtures/llama. Run with tools/requirements.txt installed:

    python tools/make_server_fixture.py
"""

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "server_llama")
SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def main():
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": CHAT_TEMPLATE,
            },
            f,
            indent=2,
        )
        f.write("\n")
    for name in ["config.json", "generation_config.json", "model.safetensors"]:
        link = os.path.join(OUT, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "llama", name), link)
    assert tok.encode("héllo").ids[0] == 1 and len(vocab) == 259
    print(f"wrote {OUT}: vocab {len(vocab)}")


if __name__ == "__main__":
    main()
