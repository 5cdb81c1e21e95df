#!/usr/bin/env python3
"""Golden fixtures for kiln's GPT-2 and BLOOM decoders, made with Hugging Face transformers.

For each tiny random-weight model below this writes tests/fixtures/<name>/ in the layout of
tools/make_fixtures.py (so crates/kiln-models/tests/common/mod.rs reads it):
  config.json, generation_config.json, model.safetensors   as save_pretrained writes them
  tokenizer.json          a real byte-level BPE trained on TRAIN_TEXT below, vocab = the model's
  reference.safetensors   input_ids, hidden_states.{i}, last_layer_pre_norm, logits,
                          greedy_prompt, greedy_ids, greedy_step_logits, score_ids, and for BLOOM
                          long_input_ids, long_logits, long_greedy_ids, long_greedy_last_logits
  reference.json          versions, notes, perplexity of SCORE_TEXT under the tokenizer
  beam.json               transformers generate(num_beams=4, ...) for several settings, in
                          tools/make_beam_fixtures.py's schema, checked free of near ties

Everything is deterministic (fixed seeds, f32, eager attention, one CPU thread). Weights are
re-drawn with a large std so logits are decisive; every greedy step's top-1/top-2 margin is
asserted.

Run from the repository root:  python tools/make_decoder_fixtures.py [--only NAME ...]
"""

import argparse
import copy
import json
import math
import os
import shutil
import tempfile

import gguf
import numpy as np
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel,
                          LogitsProcessor, LogitsProcessorList)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

VOCAB = 384
N_PROMPT = 8
N_NEW = 16
MIN_MARGIN = 0.02
EOT = "<|endoftext|>"  # special token 0 of every fixture tokenizer: bos, eos and pad

TRAIN_TEXT = """\
The kiln was built on the side of a hill, where the wind could feed the fire through the long
night. Potters brought their bowls and jars from the village, stacked them carefully on the
shelves, and sealed the door with wet clay. For three days the fire burned, and the men took
turns watching it, adding wood when the flames fell and resting when the heat was steady.
When the kiln had cooled, they broke the seal and lifted out the pots one by one. Some had
cracked, some had warped, but most rang like bells when they were tapped, and the glaze shone
green and brown in the morning light. The children carried the small cups down the path, and
the old women counted the large jars twice, because a good firing meant a good winter.
A language model reads a sequence of tokens and predicts the next one. It is trained on a great
deal of text, and at inference time it is asked to continue a prompt, one token at a time, each
new token conditioned on all of the tokens before it. Attention lets every position look back at
the earlier positions; the keys and values of those positions are kept in a cache so that they
are not computed again for every new token.
"""
SCORE_TEXT = "The potters carried the jars down the hill in the morning light."
# BLOOM's long-context score text: between 2x and 4x the fixture's seq_length 16 in tokens.
LONG_SCORE_TEXT = ("Late in the autumn the potters fired the kiln again, and the smoke rose into "
                   "a clear sky.")
PROMPT_TEXT = "The kiln was"

# name -> (model class, config class, config kwargs, input length, seed, notes)
MODELS = {
    "gpt2": (
        GPT2LMHeadModel, GPT2Config,
        dict(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_inner=96, n_positions=64,
             activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
             bos_token_id=0, eos_token_id=0),
        24, 15,
        "GPT-2: learned positions (n_positions 64), pre-LayerNorm, gelu_new, Conv1D weights "
        "([in, out]; c_attn fused q|k|v along out), tied lm_head (no lm_head.weight in the file).",
    ),
    "bloom": (
        BloomForCausalLM, BloomConfig,
        dict(vocab_size=VOCAB, hidden_size=36, n_layer=2, n_head=6, layer_norm_epsilon=1e-5,
             apply_residual_connection_post_layernorm=False, tie_word_embeddings=True,
             bos_token_id=0, eos_token_id=0, pad_token_id=0, seq_length=16),
        24, 21,
        "BLOOM with 6 heads (not a power of two: ALiBi slopes 2^-2, 2^-4, 2^-6, 2^-8 for the "
        "closest power of two, 4 heads, then 2^-1, 2^-3 -- see reference.json alibi_slopes), head_dim 6, fused "
        "query_key_value rows laid out (n_head, 3, head_dim), tied head. seq_length 16 is the "
        "'training length' this config mentions; long_* references run past it.",
    ),
    "bloom_post_ln": (
        BloomForCausalLM, BloomConfig,
        dict(vocab_size=VOCAB, hidden_size=36, n_layer=1, n_head=6, layer_norm_epsilon=1e-5,
             apply_residual_connection_post_layernorm=True, tie_word_embeddings=True,
             bos_token_id=0, eos_token_id=0, pad_token_id=0),
        24, 35,
        "BLOOM, 1 layer, apply_residual_connection_post_layernorm=True: the residual is the "
        "layer-normed input instead of the raw one.",
    ),
}

# Beam-search settings recorded into beam.json, in the schema of tools/make_beam_fixtures.py
# (HF generate() names; eos_token_id [] means None) so one test harness reads every causal
# fixture. "eos" is filled in per model by choose_beam_case.
BEAM_BASE = dict(num_beams=4, max_new_tokens=10, length_penalty=1.0, early_stopping=False,
                 no_repeat_ngram_size=0, num_return_sequences=4, min_new_tokens=0)
BEAM_SETTINGS = [
    ("base", {}),
    ("no_eos_return_1", dict(eos_token_id=[], num_return_sequences=1)),
    ("length_penalty_2_early_true_return_2", dict(length_penalty=2.0, early_stopping=True,
                                                  num_return_sequences=2)),
    ("length_penalty_0.5", dict(length_penalty=0.5)),
    ("no_repeat_ngram_2_return_2", dict(no_repeat_ngram_size=2, num_return_sequences=2,
                                        max_new_tokens=12)),
    ("early_stopping_never_return_2", dict(early_stopping="never", num_return_sequences=2,
                                           max_new_tokens=8)),
]
# Near ties: every setting is re-run with uniform noise in [-BEAM_JITTER, BEAM_JITTER] added to
# the log-probs (several seeds) and must return the same hypotheses, so no decision is closer
# than about 2 * BEAM_JITTER and an engine within float rounding of transformers picks alike.
BEAM_JITTER = 5e-4
BEAM_JITTER_SEEDS = 4


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TRAIN_TEXT], trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert tok.token_to_id(EOT) == 0
    return tok


def reinit_(model, seed):
    """Large random weights: matrices N(0, 0.2), biases N(0, 0.2), norm weights 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "ln" in name or "norm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def final_norm(model):
    return model.transformer.ln_f


def forward(model, ids):
    """One sequence: (logits [n, vocab], hidden_states, last block output before ln_f)."""
    captured = {}
    last = model.transformer.h[-1]
    hook = last.register_forward_hook(
        lambda mod, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(ids[None], output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    return out.logits[0], [h[0] for h in out.hidden_states], captured["h"][0]


def greedy(model, prompt, n_new):
    with torch.no_grad():
        out = model.generate(
            prompt[None], do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
            eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
            attention_mask=torch.ones_like(prompt)[None])
    new = out.sequences[0, prompt.numel():]
    step_logits = torch.stack([l[0] for l in out.logits])
    assert new.numel() == n_new
    assert torch.equal(step_logits.argmax(-1), new), "greedy ids != argmax of recorded logits"
    # the same without a KV cache
    seq = prompt.clone()
    with torch.no_grad():
        for t in range(n_new):
            l = model(seq[None], use_cache=False).logits[0, -1]
            assert (l - step_logits[t]).abs().max() < 1e-4
            seq = torch.cat([seq, l.argmax()[None]])
    assert torch.equal(seq[prompt.numel():], new)
    top2 = step_logits.topk(2, dim=-1).values
    return new, step_logits, (top2[:, 0] - top2[:, 1]).min().item()


class Jitter(LogitsProcessor):
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids, scores):
        return scores + (2 * torch.rand(scores.shape, generator=self.g) - 1) * BEAM_JITTER


def run_beam(model, prompt, params, jitter_seed=None):
    """HF beam search; [{tokens, score}] best first, tokens the generated ids with the final eos
    and without padding (HF's beam_indices tell generated length from padding)."""
    kw = dict(params, eos_token_id=params["eos_token_id"] or None)
    if jitter_seed is not None:
        kw["logits_processor"] = LogitsProcessorList([Jitter(jitter_seed)])
    with torch.no_grad():
        out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None],
                             do_sample=False, pad_token_id=0, output_scores=True,
                             return_dict_in_generate=True, **kw)
    seqs = []
    for row, idx, score in zip(out.sequences, out.beam_indices, out.sequences_scores):
        n_gen = int((idx != -1).sum())
        seqs.append({"tokens": row[prompt.numel():prompt.numel() + n_gen].tolist(),
                     "score": float(score)})
    return seqs


def beam_settings(model, prompt, eos):
    """Every setting's record, or None on a near tie or when eos finishes nothing in `base`."""
    records = []
    for name, over in BEAM_SETTINGS:
        params = {**BEAM_BASE, "eos_token_id": [eos], **over}
        seqs = run_beam(model, prompt, params)
        toks = [s["tokens"] for s in seqs]
        for seed in range(BEAM_JITTER_SEEDS):
            if [s["tokens"] for s in run_beam(model, prompt, params, seed)] != toks:
                return None
        if name == "base" and not any(t[-1] == eos and len(t) < params["max_new_tokens"]
                                      for t in toks):
            return None
        records.append({"name": name, "prompt": prompt.tolist(), "params": params,
                        "sequences": seqs})
    return records


def choose_beam_case(model, input_ids):
    """The first 8-token window of input_ids and eos (a token the eos-free beams emit 3-5 tokens
    in) whose every setting is free of near ties."""
    for offset in range(0, input_ids.numel() - N_PROMPT + 1):
        prompt = input_ids[offset:offset + N_PROMPT]
        free = run_beam(model, prompt, dict(BEAM_BASE, eos_token_id=[]))
        for rank, pos in [(1, 3), (0, 4), (2, 3), (3, 4), (1, 5), (0, 2)]:
            eos = free[rank]["tokens"][pos]
            records = beam_settings(model, prompt, eos)
            if records is not None:
                return prompt, eos, records
    raise SystemExit("no beam prompt/eos free of near ties")


def make_one(name, tok, only_check=False):
    model_cls, cfg_cls, kw, n, seed, notes = MODELS[name]
    torch.manual_seed(seed)
    cfg = cfg_cls(attn_implementation="eager", **kw)
    model = model_cls(cfg)
    reinit_(model, seed)
    model.eval()
    n_layers = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64)

    logits, hs, pre_norm = forward(model, input_ids)
    assert len(hs) == n_layers + 1
    normed = final_norm(model)(pre_norm)
    assert torch.allclose(hs[-1], normed, atol=1e-6), "hidden_states[-1] is ln_f(last block)"
    assert torch.allclose(normed @ model.lm_head.weight.T, logits, atol=1e-4)
    # the head is tied to the token embedding
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    prompt = input_ids[:N_PROMPT].clone()
    new, step_logits, margin = greedy(model, prompt, N_NEW)
    assert margin > MIN_MARGIN, f"{name}: greedy margin {margin}"

    tensors = {
        "input_ids": input_ids, "logits": logits, "greedy_prompt": prompt, "greedy_ids": new,
        "greedy_step_logits": step_logits, "last_layer_pre_norm": pre_norm,
    }
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = h
    extra = {"greedy_min_top1_top2_margin": margin}

    if model_cls is BloomForCausalLM:
        extra["alibi_slopes"] = transformers.models.bloom.modeling_bloom._get_alibi_slopes(
            cfg.n_head, "cpu").tolist()
        if getattr(cfg, "seq_length", None):
            # Past the training length: a 2.5x one-shot forward, and greedy decoding to 2.5x.
            long_n = int(2.5 * cfg.seq_length)
            long_ids = torch.randint(0, VOCAB, (long_n,), generator=g, dtype=torch.int64)
            long_logits, _, _ = forward(model, long_ids)
            assert torch.isfinite(long_logits).all()
            lnew, lsteps, lmargin = greedy(model, prompt, long_n - N_PROMPT)
            assert lmargin > MIN_MARGIN / 2, f"{name}: long greedy margin {lmargin}"
            tensors.update(long_input_ids=long_ids, long_logits=long_logits,
                           long_greedy_ids=lnew, long_greedy_last_logits=lsteps[-1])
            long_score = torch.tensor(tok.encode(LONG_SCORE_TEXT, add_special_tokens=False).ids)
            assert 2 * cfg.seq_length < long_score.numel() <= 4 * cfg.seq_length
            with torch.no_grad():
                loss = model(long_score[None], labels=long_score[None], use_cache=False).loss
            assert torch.isfinite(loss)
            extra["long_score_text"] = LONG_SCORE_TEXT
            extra["long_score_ids"] = long_score.tolist()
            extra["long_score_perplexity"] = math.exp(loss.item())
            extra["long"] = (f"seq_length {cfg.seq_length}; long_input_ids has {long_n} tokens "
                             f"(one-shot forward -> long_logits); long_greedy_ids are "
                             f"{long_n - N_PROMPT} greedy tokens after greedy_prompt, "
                             f"long_greedy_last_logits the logits that chose the last one "
                             f"(min margin {lmargin:.3f}).")

    # Perplexity of SCORE_TEXT under the fixture tokenizer (no special tokens added).
    score_ids = torch.tensor(tok.encode(SCORE_TEXT, add_special_tokens=False).ids)
    with torch.no_grad():
        loss = model(score_ids[None], labels=score_ids[None], use_cache=False).loss
    tensors["score_ids"] = score_ids
    extra["score_text"] = SCORE_TEXT
    extra["score_ids"] = score_ids.tolist()
    extra["score_perplexity"] = math.exp(loss.item())
    extra["score_mean_logprob"] = -loss.item()

    # Greedy continuation of PROMPT_TEXT, for the `kiln generate` CLI test.
    p_ids = torch.tensor(tok.encode(PROMPT_TEXT, add_special_tokens=False).ids)
    with torch.no_grad():
        out = model.generate(p_ids[None], do_sample=False, max_new_tokens=8, min_new_tokens=8,
                             eos_token_id=None, pad_token_id=0,
                             attention_mask=torch.ones_like(p_ids)[None])
    gen_ids = out[0, p_ids.numel():].tolist()
    extra["prompt_text"] = PROMPT_TEXT
    extra["prompt_greedy_ids"] = gen_ids
    extra["prompt_greedy_text"] = tok.decode(gen_ids)

    beam_prompt, eos, records = choose_beam_case(model, input_ids)
    beam = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": beam_prompt.tolist(),
        "eos": eos,
        "notes": ("sequences: generated ids (final EOS included) and HF sequences_scores, best "
                  "first; params use HF generate() names; eos_token_id [] means None. Score = sum "
                  "of the new tokens' log-probs / n_new ** length_penalty (n_new counts eos, not "
                  f"the prompt). Every setting survives noise of +-{BEAM_JITTER} on the log-probs "
                  f"({BEAM_JITTER_SEEDS} seeds) unchanged. Written by make_decoder_fixtures.py "
                  "in make_beam_fixtures.py's schema."),
        "settings": records,
    }

    if only_check:
        print(name, "ok", extra)
        return

    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(os.listdir(tmp)):
            shutil.copy(os.path.join(tmp, f), os.path.join(d, f))
    tok.save(os.path.join(d, "tokenizer.json"))
    reloaded = model_cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    assert torch.equal(forward(reloaded, input_ids)[0], logits), "reloaded model differs"
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "model_type": cfg.model_type,
        "architecture": model_cls.__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "n_layers": n_layers,
        "n_tokens": n,
        "last_hidden_is_normed": True,
        "hidden_states": (f"hidden_states.0 is the input of block 0 (for BLOOM: after "
                          f"word_embeddings_layernorm); hidden_states.i is the output of block "
                          f"i-1; hidden_states.{n_layers} is ln_f of the last block's output "
                          f"(last_layer_pre_norm)."),
        "seed": seed,
        "init": "matrices/biases N(0, 0.2), LayerNorm weights 1 + N(0, 0.1), LayerNorm biases "
                "N(0, 0.1); f32; eager attention",
        "greedy": (f"generate(greedy_prompt, do_sample=False, max_new_tokens={N_NEW}, "
                   f"eos_token_id=None, attention_mask=ones); checked equal to uncached "
                   f"recomputation"),
        "tokenizer": "tokenizer.json: byte-level BPE trained on a paragraph of English "
                     "(tools/make_decoder_fixtures.py TRAIN_TEXT); id 0 is <|endoftext|>",
        "notes": notes,
    }
    ref.update(extra)
    for fname, obj in (("reference.json", ref), ("beam.json", beam)):
        with open(os.path.join(d, fname), "w") as f:
            json.dump(obj, f, indent=1 if fname == "beam.json" else 2)
            f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, margin={margin:.3f}, "
          f"ppl={extra['score_perplexity']:.3f}, beam eos={eos}, "
          f"beam lens={[[len(q['tokens']) for q in r['sequences']] for r in records]}")
    if name in GGUF_FAMILIES:
        make_gguf(name, model, tok, input_ids)


def gguf_tensors_gpt2(cfg, name, t):
    """convert_hf_to_gguf.py GPT2Model: Conv1D weights transposed to (out, in); attn.bias masks
    dropped; no output tensor (llama.cpp falls back to token_embd)."""
    if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        t = t.T.contiguous()
    return t


def gguf_tensors_bloom(cfg, name, t):
    """convert_hf_to_gguf.py BloomModel: query_key_value rows regrouped from (n_head, 3, head_dim)
    to q | k | v ("gpt-style"); the tied head written out again as `output`."""
    n_head, n_embed = cfg.n_head, cfg.hidden_size
    if name.endswith("self_attention.query_key_value.weight"):
        qkv = t.reshape(n_head, 3, n_embed // n_head, n_embed)
        t = torch.cat([qkv[:, i].reshape(-1, n_embed) for i in range(3)], dim=0)
    elif name.endswith("self_attention.query_key_value.bias"):
        qkv = t.reshape(n_head, 3, n_embed // n_head)
        t = torch.cat([qkv[:, i].reshape(-1) for i in range(3)], dim=0)
    return t


# family -> (gguf architecture, metadata writer, tensor transform)
GGUF_FAMILIES = {
    "gpt2": (gguf.MODEL_ARCH.GPT2, lambda w, c: (
        w.add_context_length(c.n_positions), w.add_embedding_length(c.n_embd),
        w.add_feed_forward_length(c.n_inner), w.add_head_count(c.n_head)), gguf_tensors_gpt2),
    "bloom": (gguf.MODEL_ARCH.BLOOM, lambda w, c: (
        w.add_context_length(getattr(c, "seq_length", None) or c.hidden_size),
        w.add_embedding_length(c.hidden_size), w.add_feed_forward_length(4 * c.hidden_size),
        w.add_head_count(c.n_head), w.add_head_count_kv(c.n_head)), gguf_tensors_bloom),
}


def add_gguf_tokenizer(w, tok):
    """The fixture tokenizer as tokenizer.ggml.* (gpt2 BPE, pre "gpt-2"; id 0 bos and eos)."""
    vocab = json.loads(tok.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    assert [vocab["vocab"][t] for t in tokens] == list(range(VOCAB))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == EOT else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)


def make_gguf(family, model, tok, input_ids):
    """tests/fixtures/<family>_gguf/: the fixture as llama.cpp's convert_hf_to_gguf.py
    (--outtype f16) writes it: tensor names from gguf-py's TensorNameMap, the converter's
    per-family tensor rewrites (gguf_tensors_*), 2-D tensors f16 and 1-D tensors f32, and the
    tokenizer as tokenizer.ggml.* (gpt2 BPE; pre "gpt-2", which is what the fixture tokenizer
    splits like). One deviation for GPT-2: feed_forward_length is n_inner (96) where the converter
    writes 4 * n_embd; llama.cpp itself sizes the FFN from the tensors. The reference is
    transformers on the same model with every 2-D weight rounded to f16 (exactly the values in
    the file)."""
    arch, write_meta, transform = GGUF_FAMILIES[family]
    cfg = model.config
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_model.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    d = os.path.join(OUT, f"{family}_gguf")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    w = gguf.GGUFWriter(os.path.join(d, "model.gguf"), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(cfg.num_hidden_layers)
    write_meta(w, cfg)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_gguf_tokenizer(w, tok)
    names = gguf.TensorNameMap(arch, cfg.num_hidden_layers)
    state = ref_model.state_dict()
    for name, t in state.items():
        t = transform(cfg, name, t.detach().float())
        if t is None:
            continue
        # The BLOOM converter matches names without the `transformer.` prefix.
        new = "output.weight" if name == "lm_head.weight" else names.get_name(
            name.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        w.add_tensor(new, t.numpy().astype(np.float16 if t.dim() == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    logits, _, _ = forward(ref_model, input_ids)
    prompt = input_ids[:N_PROMPT].clone()
    new, step_logits, margin = greedy(ref_model, prompt, N_NEW)
    assert margin > MIN_MARGIN / 2, f"{family}_gguf: greedy margin {margin}"
    score_ids = torch.tensor(tok.encode(SCORE_TEXT, add_special_tokens=False).ids)
    with torch.no_grad():
        loss = ref_model(score_ids[None], labels=score_ids[None], use_cache=False).loss
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous(),
               "greedy_prompt": prompt.contiguous(), "greedy_ids": new.contiguous()},
              os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "architecture": f"{type(model).__name__} (GGUF)",
        "transformers_version": transformers.__version__,
        "gguf_version": getattr(gguf, "__version__", "0.19.0"),
        "notes": " ".join(make_gguf.__doc__.split()) + " " + " ".join(transform.__doc__.split()),
        "f16_vs_f32_max_logit_diff": (logits - forward(model, input_ids)[0]).abs().max().item(),
        "greedy_min_top1_top2_margin": margin,
        "score_text": SCORE_TEXT,
        "score_ids": score_ids.tolist(),
        "score_perplexity": math.exp(loss.item()),
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{family}_gguf: {size / 1024:.0f} KiB, margin={margin:.3f}, "
          f"ppl={ref['score_perplexity']:.3f}, f16 diff={ref['f16_vs_f32_max_logit_diff']:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true", help="compute and assert, write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    tok = train_tokenizer()
    for name in args.only or MODELS:
        make_one(name, tok, only_check=args.check)


if __name__ == "__main__":
    main()
