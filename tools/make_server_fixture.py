"""Tokenizer files for tests/fixtures/server_llama: the tiny random-weight llama fixture
(tests/fixtures/llama, vocab 512, context 128) made servable by `kiln serve`.

A byte-level BPE trained to exactly the model's 512 ids on a fixed English text: ids 0..2 are
<unk>, <s>, </s> (the llama fixture's bos 1 and eos 2), then the 256 byte-level characters (so
any text encodes) and 253 merges (so every id the model can sample decodes). A ChatML-style
chat template lets the chat endpoint run. The model files are symlinks to
tests/fixtures/llama. Run with tools/requirements.txt installed:

    python tools/make_server_fixture.py
"""

import codecs
import json
import os
import this  # noqa: F401  (prints the Zen once; its text is this.s)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tokenizers.pre_tokenizers import ByteLevel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "server_llama")
SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


VOCAB = 512
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "A server answers many requests at once; each one streams its tokens back as they come.",
    "Hello there! How are you today? I am fine, thank you, and you?",
    "Once upon a time there was a kiln where potters fired their clay into bright pots.",
    "Numbers like 12, 345 and 6789 appear in text, as do symbols such as #, $, % and &.",
] * 20
# More varied words so that training reaches 512 ids: the Zen of Python (stable since 2004).
ZEN = codecs.decode(this.s, "rot13").splitlines()


def main():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS + ZEN * 20, trainer)
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
    assert tok.encode("héllo").ids[0] == 1 and tok.get_vocab_size() == VOCAB
    print(f"wrote {OUT}: vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
