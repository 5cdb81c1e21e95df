#!/usr/bin/env python3
"""kiln vs transformers (PyTorch), side by side: encoder-decoder generation at real sizes.

No real checkpoint is needed: the script builds a t5-small-shaped T5ForConditionalGeneration or
an opus-mt-shaped MarianMTModel with transformers' own random initialisation (fixed seed), saves it
with the fixture's tokenizer padded with added tokens up to the model's vocabulary, and runs the
same source (the first 600 characters of the GPL-3) through both:
  kiln:  `kiln generate --json --temperature 0 -n N -t T [--num-beams B]`, wall time of the run
         minus nothing (loading included: it is small next to generation here), plus its own
         `timings` (encoder + first step, decode)
  torch: `model.generate(max_new_tokens=N, min_new_tokens=N, num_beams=B)` with
         torch.set_num_threads(T), best of two, wall time of the call
and checks that both produced the same token ids (kiln's JSON leaves out a final EOS).

    /work/refvenv/bin/python tools/bench/seq2seq_bench.py --kiln target/release/kiln
        [--kind t5|marian] [--n 32] [--beams 1] [--threads 2] [--dir /tmp/kiln-seq2seq-bench]
"""

import argparse
import json
import os
import shutil
import subprocess
import time

import torch
from tokenizers import AddedToken, Tokenizer
from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(kind, d):
    if os.path.exists(os.path.join(d, "config.json")):
        return
    torch.manual_seed(0)
    if kind == "t5":
        cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                       num_heads=8, decoder_start_token_id=0, n_positions=512)
        model = T5ForConditionalGeneration(cfg)
    else:
        cfg = MarianConfig(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
                           encoder_attention_heads=8, decoder_attention_heads=8,
                           encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                           max_position_embeddings=512, pad_token_id=58100,
                           decoder_start_token_id=58100, eos_token_id=0,
                           activation_function="swish")
        model = MarianMTModel(cfg)
    model.save_pretrained(d)
    tok = Tokenizer.from_file(os.path.join(ROOT, "tests/fixtures", kind, "tokenizer.json"))
    have = tok.get_vocab_size()
    tok.add_tokens([AddedToken(f"<x{i}>", special=False) for i in range(have, cfg.vocab_size)])
    tok.save(os.path.join(d, "tokenizer.json"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--kind", choices=["t5", "marian"], default="t5")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/kiln-seq2seq-bench")
    a = ap.parse_args()
    d = os.path.join(a.dir, a.kind)
    os.makedirs(d, exist_ok=True)
    build(a.kind, d)
    text = open("/usr/share/common-licenses/GPL-3").read()[:600]

    cmd = [a.kiln, "generate", "-m", d, "-p", text, "--json", "-n", str(a.n),
           "-t", str(a.threads)]
    cmd += ["--num-beams", str(a.beams)] if a.beams > 1 else ["--temperature", "0"]
    kiln_s, kiln = 1e9, None
    for _ in range(2):
        t0 = time.time()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        kiln_s = min(kiln_s, time.time() - t0)
        kiln = json.loads(out)

    cls = T5ForConditionalGeneration if a.kind == "t5" else MarianMTModel
    model = cls.from_pretrained(d, attn_implementation="eager").eval()
    torch.set_num_threads(a.threads)
    ids = torch.tensor([Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(text).ids])
    torch_s, seq = 1e9, None
    for _ in range(2):
        t0 = time.time()
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=a.beams, max_new_tokens=a.n, min_new_tokens=a.n)
        torch_s = min(torch_s, time.time() - t0)
    want = seq[0, 1:].tolist()
    got = kiln["token_ids"]
    same = got == want[:len(got)] and len(want) - len(got) <= 1
    print(json.dumps(dict(kind=a.kind, source_tokens=ids.shape[1], new_tokens=len(want),
                          beams=a.beams, threads=a.threads, kiln_s=round(kiln_s, 3),
                          kiln_timings=kiln.get("timings"), torch_s=round(torch_s, 3),
                          speedup=round(torch_s / kiln_s, 2), same_tokens=same)))


if __name__ == "__main__":
    main()
