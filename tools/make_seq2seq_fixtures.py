#!/usr/bin/env python3
"""Golden fixtures for kiln's encoder-decoder models (T5, Flan-T5, BART, mBART, Marian), made with
Hugging Face transformers.

For each tiny random-weight model below this writes tests/fixtures/<name>/:
  config.json, generation_config.json, model.safetensors   as save_pretrained writes them
                          (flan_t5: lm_head.weight added and tie_word_embeddings=false, the layout
                          of real Flan-T5 / T5 v1.1 checkpoints; transformers 5 would tie it)
  tokenizer.json          a tiny tokenizer over the model's vocabulary (Unigram for T5/Marian,
                          byte-level BPE for BART), so `kiln generate` runs on the fixture
  reference.safetensors   input_ids (the tokenized SOURCE text), decoder_input_ids (teacher forced,
                          starting with decoder_start_token_id), encoder.hidden_states.{i},
                          encoder.last_layer_pre_norm, decoder.hidden_states.{i},
                          decoder.last_layer_pre_norm, logits (decoder rows), greedy_ids,
                          greedy_step_logits (raw logits, one row per generated token)
  reference.json          versions, layer counts, the source text, notes
  beam.json               transformers generate(num_beams=4) under a few settings: the kwargs, the
                          returned sequences (decoder start token included) and sequences_scores

hidden_states.0 is the embedding output (after BART's layernorm_embedding); hidden_states.i
(1 <= i < n_layers) the output of layer i-1; hidden_states.{n_layers} is what the stack returns
(T5: after final_layer_norm; BART/Marian: the last layer's output); last_layer_pre_norm is the
last layer's raw output (a forward hook).

Everything is deterministic (fixed seeds, f32, eager attention, one CPU thread). Weights are
re-drawn large so logits are decisive; the script asserts a minimum top-1/top-2 margin on every
greedy step that is not forced.

Run from the repository root:  python tools/make_seq2seq_fixtures.py [--only NAME ...]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_encoder_fixtures import bpe_tokenizer, wordpiece_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

VOCAB = 512
N_NEW = 12  # greedy / beam new tokens at most
MIN_MARGIN = 0.02
STD = float(os.environ.get('STD', '0.2'))
SOURCE = "This program is free software: you can redistribute it and modify it."
N_DEC = 10  # teacher-forced decoder input length

BEAM_SETTINGS = [
    dict(num_beams=4, max_new_tokens=N_NEW),
    dict(num_beams=4, max_new_tokens=N_NEW, length_penalty=0.6, early_stopping=True,
         num_return_sequences=2),
    dict(num_beams=4, max_new_tokens=N_NEW, no_repeat_ngram_size=2, length_penalty=2.0,
         num_return_sequences=2),
]


def unigram_tokenizer(special_front, special_back, post):
    """SentencePiece-style Unigram over exactly VOCAB ids: pieces from the deterministic WordPiece
    vocabulary (as tools/make_encoder_fixtures.py), length-based scores."""
    wp, _ = wordpiece_tokenizer()
    pieces = ["\u2581"]
    for t in sorted(wp.get_vocab(), key=lambda t: (len(t), t)):
        if t.startswith("[") and t.endswith("]"):
            continue
        for p in ([t[2:]] if t.startswith("##") else ["\u2581" + t, t]):
            if p not in pieces:
                pieces.append(p)
    n = VOCAB - len(special_front) - len(special_back)
    # Keep every single character (so any text tokenizes), then the shortest longer pieces.
    singles = [p for p in pieces if len(p) == 1 or (len(p) == 2 and p[0] == "\u2581")]
    longer = [p for p in pieces if p not in singles]
    pieces = (singles + longer)[:n]
    vocab = ([(t, 0.0) for t in special_front] + [(p, -8.0 + 0.5 * len(p)) for p in pieces]
             + [(t, 0.0) for t in special_back])
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.Unigram(vocab, unk_id=[t for t, _ in vocab].index("<unk>"),
                                   byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single=post, pair=post.replace("$A", "$A $B"), special_tokens=[("</s>", eos)])
    tok.decoder = decoders.Metaspace()
    for t in special_front + special_back:
        tok.add_special_tokens([t])
    return tok


def t5_tokenizer():
    return unigram_tokenizer(["<pad>", "</s>", "<unk>"], [], "$A </s>")


def marian_tokenizer():
    return unigram_tokenizer(["</s>", "<unk>"], ["<pad>"], "$A </s>")


def bart_tokenizer():
    tok, _ = bpe_tokenizer()
    assert tok.get_vocab_size() <= VOCAB
    return tok


T5_COMMON = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 dropout_rate=0.0, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
                 pad_token_id=0, eos_token_id=1)
BART_COMMON = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                   decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0)

# name -> (model class, config, tokenizer factory, seed, notes)
MODELS = {
    "t5": (
        T5ForConditionalGeneration,
        lambda: T5Config(**T5_COMMON, feed_forward_proj="relu", relative_attention_num_buckets=8,
                         relative_attention_max_distance=16, n_positions=64),
        t5_tokenizer, 11,
        "T5 v1.0: ReLU FFN (wi, wo), tied head: decoder output scaled by d_model**-0.5 before "
        "lm_head = shared. 8 buckets / max distance 16, so sources of 16+ tokens reach the "
        "log-spaced and clamped buckets. n_positions 64 (kiln's source length limit).",
    ),
    "flan_t5": (
        T5ForConditionalGeneration,
        lambda: T5Config(**dict(T5_COMMON, d_kv=12), feed_forward_proj="gated-gelu",
                         relative_attention_num_buckets=16, relative_attention_max_distance=32,
                         tie_word_embeddings=False),
        t5_tokenizer, 12,
        "T5 v1.1 / Flan-T5: gated GELU (gelu_new) FFN (wi_0, wi_1, wo), untied lm_head.weight, "
        "no output rescaling; inner attention dim 4 x 12 = 48 != d_model 32. No n_positions: "
        "relative positions have no hard source limit.",
    ),
    "bart": (
        BartForConditionalGeneration,
        lambda: BartConfig(**BART_COMMON, activation_function="gelu", scale_embedding=True,
                           bos_token_id=0, pad_token_id=1, eos_token_id=2,
                           decoder_start_token_id=2, forced_bos_token_id=0,
                           forced_eos_token_id=2),
        bart_tokenizer, 13,
        "BART: learned positions offset by 2, scale_embedding (sqrt(d_model)), "
        "layernorm_embedding, post-LayerNorm, GELU, random final_logits_bias, tied head. "
        "Generation starts at decoder_start_token_id 2, forced_bos_token_id 0 is forced as the "
        "first generated token and forced_eos_token_id 2 when one token of max_length is left.",
    ),
    "mbart": (
        MBartForConditionalGeneration,
        lambda: MBartConfig(**BART_COMMON, activation_function="gelu", scale_embedding=True,
                            bos_token_id=0, pad_token_id=1, eos_token_id=2,
                            decoder_start_token_id=2, forced_eos_token_id=2),
        bart_tokenizer, 15,
        "mBART: pre-norm blocks (h = x + attn(LN(x))), layernorm_embedding, and a final "
        "layer_norm closing each stack; learned positions offset by 2, scale_embedding, GELU, "
        "tied head with final_logits_bias. No forced BOS (real mBART forces a language code).",
    ),
    "marian": (
        MarianMTModel,
        lambda: MarianConfig(**BART_COMMON, activation_function="swish", scale_embedding=True,
                             pad_token_id=VOCAB - 1, eos_token_id=0,
                             decoder_start_token_id=VOCAB - 1, forced_eos_token_id=0),
        marian_tokenizer, 14,
        "Marian (opus-mt style): sinusoidal positions (sin in the first half, cos in the second, "
        "not interleaved), scale_embedding, no layernorm_embedding, post-LayerNorm, SiLU, "
        "final_logits_bias, tied head. decoder_start_token_id = pad = 511, eos 0.",
    ),
}


def reinit_(model, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "embed_positions" in name and isinstance(model, MarianMTModel):
                continue  # sinusoidal, frozen
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(STD * torch.randn(p.shape, generator=g))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(0.5 * torch.randn(model.final_logits_bias.shape,
                                                            generator=g))


def stacks(model):
    if isinstance(model, T5ForConditionalGeneration):
        return model.encoder, model.decoder, model.encoder.block, model.decoder.block
    return (model.model.encoder, model.model.decoder, model.model.encoder.layers,
            model.model.decoder.layers)


def forward(model, src, dec):
    captured = {}
    _, _, enc_layers, dec_layers = stacks(model)
    hooks = [
        enc_layers[-1].register_forward_hook(
            lambda m, a, o: captured.__setitem__("enc", o[0] if isinstance(o, tuple) else o)),
        dec_layers[-1].register_forward_hook(
            lambda m, a, o: captured.__setitem__("dec", o[0] if isinstance(o, tuple) else o)),
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=src[None], decoder_input_ids=dec[None],
                        output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return (out.logits[0], [h[0] for h in out.encoder_hidden_states],
            [h[0] for h in out.decoder_hidden_states], captured["enc"][0], captured["dec"][0])


def greedy(model, src):
    with torch.no_grad():
        out = model.generate(src[None], do_sample=False, max_new_tokens=N_NEW,
                             output_logits=True, output_scores=True,
                             return_dict_in_generate=True,
                             attention_mask=torch.ones_like(src)[None])
    seq = out.sequences[0]
    assert seq[0].item() == model.generation_config.decoder_start_token_id
    new = seq[1:]
    raw = torch.stack([l[0] for l in out.logits])
    processed = torch.stack([s[0] for s in out.scores])
    assert raw.shape[0] == new.numel()
    assert torch.equal(processed.argmax(-1), new), "greedy ids != argmax of processed scores"
    return new, raw, processed


def beams(model, src):
    runs = []
    for kw in BEAM_SETTINGS:
        with torch.no_grad():
            out = model.generate(src[None], do_sample=False, output_scores=True,
                                 return_dict_in_generate=True,
                                 attention_mask=torch.ones_like(src)[None], **kw)
        runs.append(dict(kwargs=kw, sequences=out.sequences.tolist(),
                         sequences_scores=out.sequences_scores.tolist()))
    return runs


def make_one(name, check):
    """Tries seeds from the model's own until every unforced greedy step has a clear margin."""
    base = MODELS[name][3]
    for seed in range(base, base + 2000, 100):
        if make_seeded(name, seed, check):
            return
    raise SystemExit(f"{name}: no seed gave greedy margins above {MIN_MARGIN}")


def make_seeded(name, seed, check):
    model_cls, make_cfg, make_tok, _, notes = MODELS[name]
    tok = make_tok()
    src = torch.tensor(tok.encode(SOURCE).ids, dtype=torch.int64)
    assert tok.token_to_id("<unk>") not in src.tolist() or name == "bart", src
    torch.manual_seed(seed)
    cfg = make_cfg()
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    reinit_(model, seed)
    if name == "bart":
        # BartConfig in transformers 5 drops forced_bos_token_id; real BART checkpoints (e.g.
        # bart-large-cnn) carry it, so put it where generate() reads it.
        model.generation_config.forced_bos_token_id = 0
    start = model.generation_config.decoder_start_token_id
    g = torch.Generator().manual_seed(seed)
    dec = torch.cat([torch.tensor([start]), torch.randint(3, VOCAB - 1, (N_DEC - 1,), generator=g)])

    d = tempfile.mkdtemp() if check else os.path.join(OUT, name)
    if os.path.exists(d) and not check:
        shutil.rmtree(d)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    if name == "flan_t5":
        # Real Flan-T5 files carry their own lm_head.weight and tie_word_embeddings=false.
        sd = load_file(os.path.join(d, "model.safetensors"))
        sd["lm_head.weight"] = 0.2 * torch.randn(VOCAB, cfg.d_model, generator=g)
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json")) as f:
            cj = json.load(f)
        cj["tie_word_embeddings"] = False
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cj, f, indent=2, sort_keys=True)
    # The reference is the model as transformers loads it from these files.
    model = model_cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    if name == "flan_t5":
        assert model.lm_head.weight is not model.shared.weight
        assert not model.config.scale_decoder_outputs
    if name == "t5":
        assert model.config.scale_decoder_outputs and model.lm_head.weight is model.shared.weight

    logits, enc_hs, dec_hs, enc_pre, dec_pre = forward(model, src, dec)
    new, raw, processed = greedy(model, src)
    forced = set()
    fb = getattr(model.generation_config, "forced_bos_token_id", None)
    if fb is not None:
        forced.add(0)
    fe = getattr(model.generation_config, "forced_eos_token_id", None)
    if fe is not None:
        forced.add(N_NEW - 1)
    top2 = raw.topk(2, dim=-1).values
    margin = min((top2[i, 0] - top2[i, 1]).item() for i in range(raw.shape[0]) if i not in forced)
    if margin <= MIN_MARGIN:
        print(f"{name}: seed {seed} greedy margin {margin:.4f} too small, next seed")
        shutil.rmtree(d)
        return False
    beam_runs = beams(model, src)

    tensors = {
        "input_ids": src.contiguous(),
        "decoder_input_ids": dec.contiguous(),
        "logits": logits.contiguous(),
        "greedy_ids": new.contiguous(),
        "greedy_step_logits": raw.contiguous(),
        "encoder.last_layer_pre_norm": enc_pre.clone().contiguous(),
        "decoder.last_layer_pre_norm": dec_pre.clone().contiguous(),
    }
    for i, h in enumerate(enc_hs):
        tensors[f"encoder.hidden_states.{i}"] = h.contiguous()
    for i, h in enumerate(dec_hs):
        tensors[f"decoder.hidden_states.{i}"] = h.contiguous()
    gc = model.generation_config
    ref = {
        "architecture": model_cls.__name__,
        "model_type": model.config.model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "n_encoder_layers": len(enc_hs) - 1,
        "n_decoder_layers": len(dec_hs) - 1,
        "source_text": SOURCE,
        "decoder_start_token_id": gc.decoder_start_token_id,
        "eos_token_id": gc.eos_token_id,
        "forced_bos_token_id": fb,
        "forced_eos_token_id": fe,
        "seed": seed,
        "init": "matrices and biases N(0, 0.2), norm weights 1 + N(0, 0.1), T5 relative "
                "attention bias N(0, 1), final_logits_bias N(0, 0.5); f32; eager attention",
        "greedy": f"model.generate(input_ids[None], do_sample=False, max_new_tokens={N_NEW}, "
                  "attention_mask=ones) with the fixture's generation_config (eos, forced "
                  "bos/eos); greedy_ids exclude the decoder start token and include a final eos "
                  "if one was produced; greedy_step_logits are the raw logits of each step "
                  "(before forced-token processors).",
        "greedy_min_top1_top2_margin": margin,
        "notes": notes,
    }
    if check:
        print(name, "ok", new.tolist(), margin)
        shutil.rmtree(d)
        return True
    tok.save(os.path.join(d, "tokenizer.json"))
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "beam.json"), "w") as f:
        json.dump(dict(
            note="transformers generate(input_ids[None], attention_mask=ones, **kwargs) with the "
                 "fixture's generation_config; sequences include the decoder start token; "
                 "sequences_scores are the length-penalised sums of log-probabilities.",
            input_ids=src.tolist(), runs=beam_runs), f, indent=2)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, src {len(src)} tokens, greedy {new.tolist()}, "
          f"margin {margin:.3f}")
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true", help="compute and assert, write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    for name in args.only or MODELS:
        make_one(name, args.check)


if __name__ == "__main__":
    main()
