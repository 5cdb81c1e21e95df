#!/usr/bin/env python3
"""Golden fixtures for kiln's LLaMA-family models, made with Hugging Face transformers.

For each tiny random-weight model below this writes tests/fixtures/<name>/:
  config.json             as model.save_pretrained writes it (transformers 5.x: `rope_parameters`)
  config_v4.json          the same config in transformers 4.x style (`rope_theta` + `rope_scaling`,
                          `torch_dtype`), so kiln can check both formats load identically
  generation_config.json  as save_pretrained writes it
  model.safetensors       f32 weights
  reference.safetensors   input_ids, hidden_states.{i}, logits, greedy_* (see tools/README.md)
  reference.json          versions, layer count, which hidden state is normed, notes

Everything is deterministic (fixed seeds, f32, eager attention, one CPU thread). Each model's
weights are re-drawn with a large std so logits are decisive and greedy decoding has clear margins;
the script asserts a minimum top-1/top-2 margin on every greedy step.

Run from the repository root:  python tools/make_fixtures.py [--only NAME ...]
"""

import argparse
import copy
import json
import os
import shutil
import tempfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

VOCAB = 512
HIDDEN = 64
INTERMEDIATE = 128
N_HEADS = 4
HEAD_DIM = 16
N_PROMPT = 8  # greedy prompt = first 8 ids of input_ids
N_NEW = 16  # greedy new tokens
MIN_MARGIN = 0.02  # smallest allowed top-1 minus top-2 logit on any greedy step (seeds chosen for it)

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=2,
    num_attention_heads=N_HEADS,
    num_key_value_heads=2,
    head_dim=HEAD_DIM,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    initializer_range=0.2,
)

# name -> (model class, config class, config overrides, input length, seed, notes)
MODELS = {
    "llama": (
        LlamaForCausalLM, LlamaConfig, {}, 24, 1,
        "GQA: 4 query heads, 2 kv heads. Untied lm_head.",
    ),
    "llama_tied_mqa": (
        LlamaForCausalLM, LlamaConfig,
        dict(num_key_value_heads=1, tie_word_embeddings=True, num_hidden_layers=3), 24, 2,
        "MQA (1 kv head), tie_word_embeddings=True like SmolLM2: model.safetensors has no "
        "lm_head.weight, the head is model.embed_tokens.weight. 3 layers.",
    ),
    "mistral": (
        MistralForCausalLM, MistralConfig, dict(sliding_window=8), 24, 3,
        "Sliding window 8 on every layer, input 24 tokens.",
    ),
    "qwen2": (
        Qwen2ForCausalLM, Qwen2Config, dict(use_sliding_window=False), 24, 4,
        "q/k/v projections have random (non-zero) biases; o_proj and MLP have none. Untied.",
    ),
    "llama3_rope": (
        LlamaForCausalLM, LlamaConfig,
        dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
             max_position_embeddings=128), 24, 45,
        "Llama 3.1 rope scaling. head_dim 16, theta 10000: wavelengths 2*pi/inv_freq are "
        "6.3, 19.9, 62.8, ... so with original_max_position_embeddings 16 (low_freq_wavelen 16, "
        "high_freq_wavelen 4) inv_freq[0] is smoothed and inv_freq[1..] are divided by 8.",
    ),
    "llama_linear_rope": (
        LlamaForCausalLM, LlamaConfig,
        dict(rope_scaling={"rope_type": "linear", "factor": 4.0}), 24, 26,
        "Linear position interpolation: inv_freq / 4.",
    ),
    "llama_dynamic_rope": (
        LlamaForCausalLM, LlamaConfig,
        dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
        32, 37,
        "Dynamic NTK, factor 2, max_position_embeddings 16, input 32 tokens. transformers "
        "recomputes base = theta * (factor*seq_len/max_pos - (factor-1))^(dim/(dim-2)) with "
        "seq_len = max(position_ids)+1 of the *current forward call* and applies it to every "
        "position of that call; for the 32-token forward seq_len = 32.",
    ),
    "llama_yarn_rope": (
        LlamaForCausalLM, LlamaConfig,
        dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                           "original_max_position_embeddings": 16},
             max_position_embeddings=64), 24, 48,
        "YaRN, factor 4, original_max_position_embeddings 16, beta_fast 32 / beta_slow 1 "
        "(defaults), truncate true (default). cos and sin are both multiplied by "
        "attention_factor = 0.1*ln(factor)+1 (see reference.json rope_attention_scaling), so "
        "q.k scores scale by its square.",
    ),
}


def make_config(cfg_cls, overrides, rope_default=False):
    kw = dict(COMMON)
    kw.update(overrides)
    if rope_default:
        kw.pop("rope_scaling", None)
    return cfg_cls(attn_implementation="eager", **kw)


def reinit_(model, seed):
    """Large random weights: matrices N(0, 0.2), biases N(0, 0.2), norm weights 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(model_cls, cfg_cls, overrides, seed, rope_default=False, state=None):
    torch.manual_seed(seed)
    model = model_cls(make_config(cfg_cls, overrides, rope_default))
    if state is None:
        reinit_(model, seed)
    else:
        model.load_state_dict(state)
    return model.eval()


def forward(model, ids):
    """Full forward on one sequence; returns (logits [n, vocab], hidden_states tuple, pre-norm)."""
    captured = {}
    last_layer = model.model.layers[-1]
    hook = last_layer.register_forward_hook(
        lambda mod, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(ids[None], output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    hs = [h[0] for h in out.hidden_states]
    return out.logits[0], hs, captured["h"][0]


def greedy(model, prompt):
    with torch.no_grad():
        out = model.generate(
            prompt[None], do_sample=False, max_new_tokens=N_NEW, min_new_tokens=N_NEW,
            eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
            # Explicit mask: without it generate() infers attention_mask = (ids != pad_token_id),
            # so a prompt containing id 0 would be treated as left-padded (masked, positions
            # shifted).
            attention_mask=torch.ones_like(prompt)[None],
        )
    new = out.sequences[0, prompt.numel():]
    step_logits = torch.stack([l[0] for l in out.logits])
    assert new.numel() == N_NEW, new
    # generate must have taken the argmax of the raw logits (no processor changed them)
    assert torch.equal(step_logits.argmax(-1), new), "greedy ids != argmax of recorded logits"
    return new, step_logits


def greedy_no_cache(model, prompt):
    """Greedy decoding recomputing the whole sequence each step (no KV cache)."""
    seq = prompt.clone()
    logits = []
    with torch.no_grad():
        for _ in range(N_NEW):
            l = model(seq[None], use_cache=False).logits[0, -1]
            logits.append(l)
            seq = torch.cat([seq, l.argmax()[None]])
    return seq[prompt.numel():], torch.stack(logits)


def margins(step_logits):
    top2 = step_logits.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1])


def to_v4(cfg5):
    """Hand-convert a transformers 5.x config.json dict to the 4.x style."""
    cfg = copy.deepcopy(cfg5)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["rope_theta"]
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") == "default":
        cfg["rope_scaling"] = None
    elif scaling["rope_type"] in ("linear", "dynamic"):
        # Llama-2-era checkpoints (transformers < 4.45) spell it "type"; keep that spelling here
        # so kiln's loader is tested on it. llama3/yarn configs always used "rope_type".
        scaling["type"] = scaling.pop("rope_type")
        cfg["rope_scaling"] = dict(sorted(scaling.items()))
    else:
        cfg["rope_scaling"] = dict(sorted(scaling.items()))
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.46.0"
    return dict(sorted(cfg.items()))


def check_v4_loads_identically(cfg_cls, cfg5, cfg4):
    a = cfg_cls.from_dict(copy.deepcopy(cfg5))
    b = cfg_cls.from_dict(copy.deepcopy(cfg4))
    rpa = {k: v for k, v in a.rope_parameters.items() if k != "type"}
    rpb = {k: v for k, v in b.rope_parameters.items() if k != "type"}
    assert rpa == rpb, (rpa, rpb)
    for k in ("hidden_size", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
              "max_position_embeddings", "sliding_window"):
        assert getattr(a, k, None) == getattr(b, k, None), k


def sliding_window_experiment(window, n):
    """1-layer Mistral: which keys does the query at position p see? Perturb one input token at
    a time and see whether the last position's logits move (one layer, so no indirect paths)."""
    ov = dict(sliding_window=window, num_hidden_layers=1)
    model = build(MistralForCausalLM, MistralConfig, ov, 99)
    g = torch.Generator().manual_seed(99)
    ids = torch.randint(0, VOCAB, (n,), generator=g)
    with torch.no_grad():
        base = model(ids[None], use_cache=False).logits[0, -1]
    p = n - 1
    seen = []
    for j in range(n):
        pert = ids.clone()
        pert[j] = (pert[j] + 1) % VOCAB
        with torch.no_grad():
            l = model(pert[None], use_cache=False).logits[0, -1]
        if not torch.equal(l, base):
            seen.append(j)
    assert seen == list(range(p - window + 1, p + 1)), seen
    return (f"query at position p attends keys p-W+1..p inclusive (W keys including itself): "
            f"with W={window}, n={n}, perturbing token j changes the last position's logits "
            f"exactly for j in {seen[0]}..{seen[-1]} (1-layer model); transformers mask is "
            f"kv_idx > q_idx - W.")


def make_one(name, only_check=False):
    model_cls, cfg_cls, overrides, n, seed, notes = MODELS[name]
    model = build(model_cls, cfg_cls, overrides, seed)
    cfg = model.config
    n_layers = cfg.num_hidden_layers

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64)

    logits, hs, pre_norm = forward(model, input_ids)
    assert len(hs) == n_layers + 1, len(hs)
    inv_freq = model.model.rotary_emb.inv_freq.detach().clone()
    attn_scaling = float(model.model.rotary_emb.attention_scaling)

    # Which element of hidden_states is the final-norm output?
    normed = model.model.norm(pre_norm)
    last_is_normed = bool(torch.allclose(hs[-1], normed, atol=1e-6))
    last_is_pre_norm = bool(torch.allclose(hs[-1], pre_norm, atol=1e-6))
    assert last_is_normed != last_is_pre_norm
    # the lm_head is applied to the normed state
    head = model.lm_head.weight
    assert torch.allclose(normed @ head.T, logits, atol=1e-4)

    extra = {}
    # Feature checks: every non-default feature must actually change the logits.
    if name == "mistral":
        nowin = build(model_cls, cfg_cls, dict(overrides, sliding_window=None), seed,
                      state=model.state_dict())
        l2, _, _ = forward(nowin, input_ids)
        d = (l2 - logits).abs().max().item()
        assert d > 1e-2, f"sliding window has no effect (max diff {d})"
        # the first W positions see everything either way
        w = cfg.sliding_window
        assert torch.allclose(l2[:w], logits[:w], atol=1e-5)
        extra["sliding_window_max_logit_diff_vs_none"] = d
        extra["sliding_window_semantics"] = sliding_window_experiment(w, n)
    if "rope_scaling" in overrides:
        plain = build(model_cls, cfg_cls, overrides, seed, rope_default=True,
                      state=model.state_dict())
        l2, _, _ = forward(plain, input_ids)
        d = (l2 - logits).abs().max().item()
        assert d > 1e-2, f"rope scaling has no effect (max diff {d})"
        extra["rope_scaling_max_logit_diff_vs_unscaled"] = d
        extra["rope_inv_freq_unscaled"] = plain.model.rotary_emb.inv_freq.tolist()
    if name == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias.abs().min() > 0

    # Greedy generation with transformers' KV cache (the reference), then without a cache.
    prompt = input_ids[:N_PROMPT].clone()
    new, step_logits = greedy(model, prompt)
    new_nc, step_logits_nc = greedy_no_cache(model, prompt)
    cache_diff = (step_logits - step_logits_nc).abs().max().item()
    extra["greedy_cache_vs_no_cache_max_logit_diff"] = cache_diff
    extra["greedy_cache_vs_no_cache_same_ids"] = bool(torch.equal(new, new_nc))
    m = torch.minimum(margins(step_logits), margins(step_logits_nc))
    extra["greedy_min_top1_top2_margin"] = m.min().item()
    assert m.min().item() > MIN_MARGIN, f"{name}: greedy margin {m.min().item()} too small"
    if name != "llama_dynamic_rope":
        assert cache_diff < 1e-4, f"{name}: cached vs uncached greedy logits differ by {cache_diff}"

    tensors = {
        "input_ids": input_ids.contiguous(),
        "logits": logits.contiguous(),
        "greedy_prompt": prompt.contiguous(),
        "greedy_ids": new.contiguous(),
        "greedy_step_logits": step_logits.contiguous(),
        "rope_inv_freq": inv_freq.float().contiguous(),
    }
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = h.contiguous()
    if last_is_normed:
        tensors["last_layer_pre_norm"] = pre_norm.contiguous()
    if name == "llama_dynamic_rope":
        tensors["greedy_ids_no_cache"] = new_nc.contiguous()
        tensors["greedy_step_logits_no_cache"] = step_logits_nc.contiguous()

    if only_check:
        print(name, "ok", {k: v for k, v in extra.items() if not isinstance(v, list)})
        return

    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(os.listdir(tmp)):
            shutil.copy(os.path.join(tmp, f), os.path.join(d, f))
    with open(os.path.join(d, "config.json")) as f:
        cfg5 = json.load(f)
    cfg4 = to_v4(cfg5)
    check_v4_loads_identically(cfg_cls, cfg5, cfg4)
    with open(os.path.join(d, "config_v4.json"), "w") as f:
        json.dump(cfg4, f, indent=2)
        f.write("\n")

    # the saved weights must reproduce the reference
    reloaded = model_cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    l3, _, _ = forward(reloaded, input_ids)
    assert torch.equal(l3, logits), "reloaded model gives different logits"

    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})

    hs_note = (
        f"hidden_states.0 is the embedding output; hidden_states.i (1 <= i < {n_layers}) is the "
        f"output of decoder layer i-1 (residual stream, before any norm); "
        + (f"hidden_states.{n_layers} is the output of the last decoder layer AFTER the final "
           f"RMSNorm (model.norm), i.e. the input of lm_head; the last layer's output before the "
           f"norm is stored as last_layer_pre_norm."
           if last_is_normed else
           f"hidden_states.{n_layers} is the output of the last decoder layer BEFORE the final norm.")
    )
    ref = {
        "model_type": cfg.model_type,
        "architecture": model_cls.__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "n_layers": n_layers,
        "n_tokens": n,
        "last_hidden_is_normed": last_is_normed,
        "hidden_states": hs_note,
        "rope_type": cfg.rope_parameters.get("rope_type", "default"),
        "rope_attention_scaling": attn_scaling,
        "rope_inv_freq_used": inv_freq.tolist(),
        "seed": seed,
        "init": "matrices and biases N(0, 0.2), norm weights 1 + N(0, 0.1); f32; eager attention",
        "greedy": (f"model.generate(greedy_prompt[None], do_sample=False, max_new_tokens={N_NEW}, "
                   f"min_new_tokens={N_NEW}, eos_token_id=None, pad_token_id=0, "
                   f"attention_mask=ones) with transformers' default KV cache; "
                   f"greedy_step_logits[t] are the raw logits that chose greedy_ids[t] (argmax "
                   f"checked). The explicit all-ones attention_mask matters: without it generate() "
                   f"masks prompt tokens equal to pad_token_id 0 as left padding."),
        "notes": notes,
    }
    if name == "llama_dynamic_rope":
        ref["notes"] += (
            " DURING GENERATION the prompt (8 tokens) is prefilled with unscaled frequencies and "
            "each decode step with seq_len > 16 recomputes inv_freq for the new length, but keys "
            "already in transformers' KV cache keep the rotation they were written with, so "
            "cached generation != recomputing the whole sequence. greedy_ids/greedy_step_logits "
            "are transformers' cached behaviour; greedy_ids_no_cache/greedy_step_logits_no_cache "
            "recompute the full sequence each step (every position rotated with the frequencies "
            "for the current length), which is what the 32-token `logits` reference does. "
            "rope_inv_freq is the inv_freq used for the 32-token forward (seq_len 32).")
    ref.update(extra)
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, last_hidden_is_normed={last_is_normed}, "
          f"margin={m.min().item():.3f}, cache_diff={cache_diff:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true", help="compute and assert, write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    for name in args.only or MODELS:
        make_one(name, only_check=args.check)


if __name__ == "__main__":
    main()
