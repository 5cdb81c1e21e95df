#!/usr/bin/env python3
"""Golden fixtures for kiln's mixture-of-experts decoders, made with Hugging Face transformers.

For each tiny random-weight model below this writes tests/fixtures/<name>/ in the layout of
tools/make_fixtures.py / make_decoder_fixtures.py (so crates/kiln-models/tests/common/mod.rs reads
it):
  config.json, generation_config.json, model.safetensors   as save_pretrained writes them (the
                          legacy per-expert layout: transformers 5.x holds experts fused in memory
                          and converts back on save)
  tokenizer.json          make_decoder_fixtures.train_tokenizer() (byte-level BPE, vocab 384,
                          id 0 = <|endoftext|>)
  reference.safetensors   input_ids, hidden_states.{i}, last_layer_pre_norm, logits, greedy_prompt,
                          greedy_ids, greedy_step_logits, score_ids, router_logits.{j},
                          expert_counts, aux_loss
  reference.json          versions, notes, sparse layers, routing facts, margins, perplexity

and three derived directories:
  mixtral_fused/          the mixtral weights in transformers 5.x's fused in-memory layout
                          (mlp.experts.gate_up_proj / down_proj), same reference
  mixtral_gguf/           model.gguf (arch llama, f32) and model-q8_0.gguf (expert tensors Q8_0)
  qwen2_moe_gguf/         model.gguf (arch qwen2moe, f32)
as llama.cpp's convert_hf_to_gguf.py (--outtype f32) would write them.

Everything is deterministic (fixed seeds, f32, eager attention, one CPU thread; transformers'
default experts kernel, checked against the eager per-expert loop).
Weights are re-drawn with a large std (router and expert weights included) so logits are decisive;
every greedy step's top-1/top-2 margin and every routing decision's k-th/(k+1)-th router logit gap
are asserted.

Run from the repository root:  python tools/make_moe_fixtures.py [--only NAME ...] [--check]
"""

import argparse
import copy
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile

import gguf
import numpy as np
import tokenizers
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,
                          Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import make_decoder_fixtures as mdf  # noqa: E402  train_tokenizer, SCORE_TEXT, EOT
import make_fixtures as mf  # noqa: E402  reinit_, forward, greedy, greedy_no_cache, margins

ROOT = os.path.dirname(TOOLS)
OUT = os.path.join(ROOT, "tests", "fixtures")

VOCAB = mdf.VOCAB  # 384
N_TOKENS = 24
N_PROMPT = mf.N_PROMPT  # 8
N_NEW = mf.N_NEW  # 16
MIN_MARGIN = 0.02  # greedy top-1 minus top-2 logit, every step
MIN_ROUTER_MARGIN = 1e-3  # k-th minus (k+1)-th router logit, every token of every sparse layer
assert mdf.N_PROMPT == N_PROMPT and mdf.N_NEW == N_NEW

HEAD_DIM = 16
# head_dim is passed to every config (so every config.json has "head_dim": 16, which Qwen2-MoE and
# OLMoE read with getattr and would otherwise derive as hidden/heads = 16 too).
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=HEAD_DIM,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    max_position_embeddings=128,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)

# name -> (model class, config class, config overrides, seed, notes)
MODELS = {
    "mixtral": (
        MixtralForCausalLM, MixtralConfig,
        dict(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
             intermediate_size=32, sliding_window=None),
        3,
        "Mixtral: every layer sparse (block_sparse_moe), 4 experts, top-2, softmax over all "
        "experts then the top-k probabilities renormalized to sum 1 (Mixtral always "
        "renormalizes; the config has no norm_topk_prob). model.safetensors is the legacy "
        "layout save_pretrained writes: model.layers.i.block_sparse_moe.gate.weight (E, H), "
        "...block_sparse_moe.experts.{e}.w1.weight (I, H) = gate, w3 (I, H) = up, w2 (H, I) = "
        "down; expert(x) = w2(silu(w1 x) * w3 x).",
    ),
    "qwen2_moe": (
        Qwen2MoeForCausalLM, Qwen2MoeConfig,
        dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
             shared_expert_intermediate_size=48, intermediate_size=96, norm_topk_prob=False,
             decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False),
        11,
        "Qwen2-MoE: every layer sparse; top-2 of 4 routed experts with the softmax probabilities "
        "NOT renormalized (norm_topk_prob false), plus a shared expert (SwiGLU, intermediate 48) "
        "scaled by sigmoid(shared_expert_gate(x)) (shared_expert_gate.weight is (1, H)) and added "
        "to the routed sum. q/k/v projections have random biases. intermediate_size 96 is unused "
        "(no dense layer) but is what GGUF feed_forward_length records. The config.json says "
        "sliding_window 0 / max_window_layers 28 with use_sliding_window false: no window.",
    ),
    "qwen3_moe": (
        Qwen3MoeForCausalLM, Qwen3MoeConfig,
        dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=2,
             moe_intermediate_size=32, intermediate_size=96, norm_topk_prob=True,
             decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False),
        21,
        "Qwen3-MoE mixing dense and sparse layers: mlp_only_layers [1] makes layer 1 a dense "
        "SwiGLU MLP (intermediate_size 96: model.layers.1.mlp.{gate,up,down}_proj), layers 0 and "
        "2 are sparse (top-2 of 4, moe_intermediate_size 32, norm_topk_prob true: the top-k "
        "probabilities renormalized to sum 1, no shared expert). q_norm/k_norm are per-head "
        "RMSNorms over head_dim: weights shape (16,), applied to q/k viewed as (.., heads, 16) "
        "before rope. No attention biases.",
    ),
    "olmoe": (
        OlmoeForCausalLM, OlmoeConfig,
        dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2, intermediate_size=32,
             norm_topk_prob=False, clip_qkv=None),
        33,
        "OLMoE: every layer sparse, top-2 of 4 without renormalization (norm_topk_prob false), "
        "no shared expert. q_norm/k_norm are RMSNorms over the WHOLE q and k projections before "
        "the head split: q_norm.weight (num_heads*head_dim,) = (64,), k_norm.weight "
        "(num_kv_heads*head_dim,) = (32,). clip_qkv null (no clamping).",
    ),
}
# Fixture directories derived from a MODELS entry (regenerated with it).
DERIVED = {"mixtral_fused": "mixtral", "mixtral_gguf": "mixtral", "qwen2_moe_gguf": "qwen2_moe"}


class Reject(Exception):
    """A seed whose margins are too small (the seed search tries the next)."""


def build(name, seed):
    model_cls, cfg_cls, overrides, _, _ = MODELS[name]
    kw = dict(COMMON)
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = cfg_cls(attn_implementation="eager", **kw)
    model = model_cls(cfg)
    mf.reinit_(model, seed)
    model.eval()
    for layer in model.model.layers:
        assert layer.self_attn.head_dim == HEAD_DIM
    return model


def is_sparse(layer):
    return hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts")


def moe_params(cfg):
    n_experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    return n_experts, cfg.num_experts_per_tok, getattr(cfg, "norm_topk_prob", None)


def router_margin(router_logits, k):
    """Smallest gap between the k-th and (k+1)-th largest router logit over all rows."""
    m = math.inf
    for rl in router_logits:
        s = rl.float().sort(dim=-1, descending=True).values
        m = min(m, (s[:, k - 1] - s[:, k]).min().item())
    return m


def moe_forward(model, ids):
    with torch.no_grad():
        return model(ids[None], output_router_logits=True, use_cache=False)


def capture_routing_during_generate(model, prompt):
    """transformers' cached greedy generate with forward hooks on every router: the router logits
    of the prefill and of every decode step, per sparse layer."""
    got = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out: got.append(out[0].detach()))
             for layer in model.model.layers if is_sparse(layer)]
    try:
        new, step_logits = mf.greedy(model, prompt)
    finally:
        for h in hooks:
            h.remove()
    return new, step_logits, got


def check_aux_loss(model, ids, out, n_experts, k):
    """aux_loss is load_balancing_loss_func over all sparse layers' router logits with
    attention_mask None, and is NOT multiplied by router_aux_loss_coef (only `loss` is); checked
    three ways. Returns the hand formula's value."""
    mod = sys.modules[type(model).__module__]
    lb = mod.load_balancing_loss_func(out.router_logits, n_experts, k, None)
    assert torch.equal(lb, out.aux_loss), (lb, out.aux_loss)
    # by hand: E * sum_e f_e * P_e, f_e = top-k picks of e / (n_tokens * n_layers) (so sum_e f_e
    # = k), P_e = mean softmax probability of e over all tokens of all sparse layers
    probs = torch.cat([torch.softmax(rl.float(), dim=-1) for rl in out.router_logits])
    picks = torch.cat([torch.topk(torch.softmax(rl.float(), -1), k, -1).indices
                       for rl in out.router_logits])
    f = torch.bincount(picks.reshape(-1), minlength=n_experts).float() / probs.shape[0]
    by_hand = n_experts * (f * probs.mean(0)).sum()
    assert torch.allclose(by_hand, out.aux_loss, rtol=1e-5, atol=1e-7), (by_hand, out.aux_loss)
    # loss with router logits = CE + coef * aux_loss
    with torch.no_grad():
        with_aux = model(ids[None], labels=ids[None], output_router_logits=True, use_cache=False)
        ce = model(ids[None], labels=ids[None], output_router_logits=False, use_cache=False)
    coef = model.config.router_aux_loss_coef
    assert torch.equal(with_aux.aux_loss, out.aux_loss)
    assert torch.allclose(with_aux.loss, ce.loss + coef * out.aux_loss, atol=1e-6), \
        (with_aux.loss, ce.loss, coef, out.aux_loss)
    return by_hand.item()


def compute(name, seed, tok):
    """Everything the fixture stores, for one seed; raises Reject if a margin is too small."""
    model = build(name, seed)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_experts, k, norm_topk = moe_params(cfg)
    sparse_layers = [i for i, layer in enumerate(model.model.layers) if is_sparse(layer)]

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (N_TOKENS,), generator=g, dtype=torch.int64)

    logits, hs, pre_norm = mf.forward(model, input_ids)
    assert len(hs) == n_layers + 1
    normed = model.model.norm(pre_norm)
    assert torch.allclose(hs[-1], normed, atol=1e-6), "hidden_states[-1] is model.norm(last layer)"
    assert torch.allclose(normed @ model.lm_head.weight.T, logits, atol=1e-4)

    out = moe_forward(model, input_ids)
    assert torch.equal(out.logits[0], logits), "output_router_logits changed the logits"
    router_logits = [rl.detach().clone() for rl in out.router_logits]
    assert len(router_logits) == len(sparse_layers), (len(router_logits), sparse_layers)
    for rl in router_logits:
        assert rl.shape == (N_TOKENS, n_experts) and rl.dtype == torch.float32, rl.shape
    # the recorded router logits are the gate's linear map of the post-attention-normed input
    picks = torch.stack([torch.topk(torch.softmax(rl, -1), k, -1).indices for rl in router_logits])
    expert_counts = torch.stack([torch.bincount(p.reshape(-1), minlength=n_experts)
                                 for p in picks]).to(torch.int64)
    assert (expert_counts.sum(-1) == N_TOKENS * k).all()
    aux_by_hand = check_aux_loss(model, input_ids, out, n_experts, k)
    # transformers' default experts kernel (grouped_mm where torch has it) vs the eager
    # per-expert loop: the same experts, logits equal to float rounding
    eager = copy.deepcopy(model)
    eager.set_experts_implementation("eager")
    assert eager.config._experts_implementation == "eager"
    e_out = moe_forward(eager, input_ids)
    for a, b in zip(e_out.router_logits, router_logits):
        assert torch.equal(torch.topk(a, k, -1).indices, torch.topk(b, k, -1).indices)
    eager_diff = (e_out.logits[0] - logits).abs().max().item()
    assert eager_diff < 1e-4, eager_diff

    prompt = input_ids[:N_PROMPT].clone()
    new, step_logits, gen_routing = capture_routing_during_generate(model, prompt)
    new_nc, step_logits_nc = mf.greedy_no_cache(model, prompt)
    cache_diff = (step_logits - step_logits_nc).abs().max().item()
    assert torch.equal(new, new_nc), f"{name}: cached and uncached greedy ids differ"
    assert cache_diff < 1e-4, f"{name}: cached vs uncached greedy logits differ by {cache_diff}"
    greedy_margin = torch.minimum(mf.margins(step_logits), mf.margins(step_logits_nc)).min().item()
    full_seq = torch.cat([prompt, new])
    seq_routing = moe_forward(model, full_seq).router_logits
    r_margin = min(router_margin(router_logits, k), router_margin(gen_routing, k),
                   router_margin(seq_routing, k))
    if greedy_margin <= MIN_MARGIN:
        raise Reject(f"greedy margin {greedy_margin:.4f}")
    if r_margin <= MIN_ROUTER_MARGIN:
        raise Reject(f"router margin {r_margin:.2e}")

    score_ids = torch.tensor(tok.encode(mdf.SCORE_TEXT, add_special_tokens=False).ids)
    with torch.no_grad():
        loss = model(score_ids[None], labels=score_ids[None], use_cache=False).loss

    tensors = {
        "input_ids": input_ids, "logits": logits, "greedy_prompt": prompt, "greedy_ids": new,
        "greedy_step_logits": step_logits, "last_layer_pre_norm": pre_norm,
        "score_ids": score_ids, "expert_counts": expert_counts,
        "aux_loss": out.aux_loss.detach().reshape(1).float(),
    }
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = h
    for j, rl in enumerate(router_logits):
        tensors[f"router_logits.{j}"] = rl
    tensors = {k_: v.detach().contiguous() for k_, v in tensors.items()}

    facts = {
        "n_layers": n_layers,
        "sparse_layers": sparse_layers,
        "dense_layers": [i for i in range(n_layers) if i not in sparse_layers],
        "n_experts": n_experts,
        "top_k": k,
        "norm_topk_prob": True if name == "mixtral" else norm_topk,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "experts_implementation": model.config._experts_implementation,
        "experts_eager_vs_default_max_logit_diff": eager_diff,
        "aux_loss": out.aux_loss.item(),
        "aux_loss_by_hand": aux_by_hand,
        "expert_counts": expert_counts.tolist(),
        "router_min_topk_margin": r_margin,
        "greedy_min_top1_top2_margin": greedy_margin,
        "greedy_cache_vs_no_cache_max_logit_diff": cache_diff,
        "score_text": mdf.SCORE_TEXT,
        "score_ids": score_ids.tolist(),
        "score_perplexity": math.exp(loss.item()),
        "score_mean_logprob": -loss.item(),
    }
    return model, tensors, facts


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def fresh_dir(out_root, name):
    d = os.path.join(out_root, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def versions():
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
    }


ROUTING_NOTE = (
    "router_logits.{j} (n_tokens, n_experts) f32 are the raw gate logits (gate.weight @ x, x the "
    "post_attention_layernorm output) of the j-th SPARSE layer in layer order (sparse_layers[j]), "
    "from one forward of input_ids with output_router_logits=True. Routing: p = softmax(logits) "
    "in f32 over all experts, the top_k experts by p, weights = their p (divided by their sum if "
    "norm_topk_prob). expert_counts[j][e] = how many of the n_tokens tokens have e among their "
    "top_k in sparse layer j (each row sums to n_tokens*top_k). aux_loss is transformers' "
    "output.aux_loss = load_balancing_loss_func(router_logits, n_experts, top_k, "
    "attention_mask=None) over all sparse layers together, BEFORE router_aux_loss_coef: the "
    "coefficient is applied only when adding it to `loss` (loss = CE + router_aux_loss_coef * "
    "aux_loss; checked). Formula (transformers 5.24 modeling_*.load_balancing_loss_func): "
    "aux = n_experts * sum_e f_e * P_e with f_e = (top-k picks of e summed over sparse layers) / "
    "(n_tokens * n_sparse_layers) and P_e = mean over tokens and sparse layers of softmax(logits)"
    "[e] (aux_loss_by_hand recomputes it). router_min_topk_margin: the smallest gap between the "
    "k-th and (k+1)-th largest router logit over every token and sparse layer of the input_ids "
    "forward, of transformers' cached greedy generate (prefill + every step, captured with hooks) "
    "and of a forward of greedy_prompt + greedy_ids; asserted > 1e-3, so an engine within float "
    "rounding picks the same experts.")


def write_fixture(name, model, tensors, facts, tok, seed, out_root):
    model_cls = type(model)
    d = fresh_dir(out_root, name)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(os.listdir(tmp)):
            shutil.copy(os.path.join(tmp, f), os.path.join(d, f))
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "config.json")) as f:
        assert "experts_implementation" not in f.read()
    reloaded = model_cls.from_pretrained(d, attn_implementation="eager",
                                         dtype=torch.float32).eval()
    assert torch.equal(mf.forward(reloaded, tensors["input_ids"])[0], tensors["logits"]), \
        f"{name}: reloaded model differs"
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    n_layers = facts["n_layers"]
    ref = {
        "model_type": model.config.model_type,
        "architecture": model_cls.__name__,
        **versions(),
        "n_tokens": N_TOKENS,
        "last_hidden_is_normed": True,
        "hidden_states": (f"hidden_states.0 is the embedding output; hidden_states.i (1 <= i < "
                          f"{n_layers}) is the output of decoder layer i-1 (residual stream); "
                          f"hidden_states.{n_layers} is model.norm of the last layer's output "
                          f"(last_layer_pre_norm), i.e. the input of lm_head."),
        "seed": seed,
        "init": ("matrices and biases N(0, 0.2) (router gate, expert and shared-expert weights "
                 "included), norm weights (incl. q_norm/k_norm) 1 + N(0, 0.1); f32; eager "
                 "attention; transformers' default experts_implementation (see "
                 "experts_implementation; config.json does not record it)"),
        "greedy": (f"generate(greedy_prompt, do_sample=False, max_new_tokens={N_NEW}, "
                   f"eos_token_id=None, pad_token_id=0, attention_mask=ones) with transformers' "
                   f"KV cache; greedy_step_logits[t] chose greedy_ids[t]; checked equal to "
                   f"uncached recomputation (ids equal, logits within 1e-4)."),
        "routing": ROUTING_NOTE,
        "aux_loss_note": ("the model's aux_loss output with output_router_logits=True: "
                          "load_balancing_loss_func(router logits of every sparse layer, "
                          "n_experts, top_k, attention_mask=None), BEFORE router_aux_loss_coef "
                          "(only the training loss multiplies by it; verified in "
                          "modeling_*.py and numerically)"),
        "score": ("score_perplexity = exp(model(score_ids, labels=score_ids).loss) with "
                  "output_router_logits off (pure cross-entropy, no aux term); score_ids = "
                  "tokenizer.json encoding of score_text without special tokens"),
        "tokenizer": ("tokenizer.json: make_decoder_fixtures.py's byte-level BPE (vocab 384, "
                      "id 0 <|endoftext|>)"),
        "notes": MODELS[name][4],
        **facts,
    }
    write_json(os.path.join(d, "reference.json"), ref)
    return d, ref


def fused_key(legacy):
    return legacy.replace(".block_sparse_moe.", ".mlp.")


def write_mixtral_fused(model, src_dir, ref, out_root):
    """mixtral_fused/: model.safetensors in transformers 5.x's in-memory (fused) layout."""
    d = fresh_dir(out_root, "mixtral_fused")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    cfg = model.config
    E, I, H = cfg.num_local_experts, cfg.intermediate_size, cfg.hidden_size
    # the expected key set: save_pretrained's names with each layer's 3E expert matrices replaced
    # by gate_up_proj + down_proj and block_sparse_moe renamed mlp
    with safe_open(os.path.join(src_dir, "model.safetensors"), "pt") as f:
        legacy = {k: f.get_tensor(k) for k in f.keys()}
    want = set()
    for k in legacy:
        if ".experts." in k:
            layer = k.split(".block_sparse_moe.")[0]
            want |= {f"{layer}.mlp.experts.gate_up_proj", f"{layer}.mlp.experts.down_proj"}
        else:
            want.add(fused_key(k))
    assert set(state) == want, set(state) ^ want
    for k, v in legacy.items():
        if ".experts." not in k:
            assert torch.equal(state[fused_key(k)], v), k
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        gu, dn = state[f"{p}.mlp.experts.gate_up_proj"], state[f"{p}.mlp.experts.down_proj"]
        assert gu.shape == (E, 2 * I, H) and dn.shape == (E, H, I)
        assert state[f"{p}.mlp.gate.weight"].shape == (E, H)
        for e in range(E):
            ex = f"{p}.block_sparse_moe.experts.{e}"
            assert torch.equal(gu[e, :I], legacy[f"{ex}.w1.weight"])  # gate rows first
            assert torch.equal(gu[e, I:], legacy[f"{ex}.w3.weight"])  # then up
            assert torch.equal(dn[e], legacy[f"{ex}.w2.weight"])
    save_file(dict(sorted(state.items())), os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    for f in ("config.json", "generation_config.json", "tokenizer.json", "reference.safetensors"):
        shutil.copy(os.path.join(src_dir, f), os.path.join(d, f))
    reloaded = MixtralForCausalLM.from_pretrained(d, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    with safe_open(os.path.join(d, "reference.safetensors"), "pt") as f:
        ids, want_logits = f.get_tensor("input_ids"), f.get_tensor("logits")
    assert torch.equal(mf.forward(reloaded, ids)[0], want_logits), "fused layout: logits differ"
    fref = dict(ref)
    fref["notes"] = (
        "The mixtral fixture (same config.json, tokenizer.json, reference.safetensors, weights) "
        "with model.safetensors written in transformers 5.x's fused in-memory layout: "
        "model.layers.i.mlp.gate.weight (E, H) (the router), model.layers.i.mlp.experts."
        "gate_up_proj (E, 2I, H) = per expert [w1 (gate) rows; w3 (up) rows], "
        "model.layers.i.mlp.experts.down_proj (E, H, I) = w2; every other key as save_pretrained "
        "names it. transformers' from_pretrained loads this directory and gives bit-identical "
        "logits (asserted). Mixtral notes: " + ref["notes"])
    fref["layout"] = "fused (transformers 5.x in-memory)"
    fref["fused_layout_loads_in_transformers"] = True
    write_json(os.path.join(d, "reference.json"), fref)
    return d


# ---------------------------------------------------------------------------------------------
# GGUF


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute: rows of each head reordered from HF's rotate-half
    pairing (i, i + d/2) to llama.cpp's interleaved pairing (2i, 2i+1)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(arch, cfg, legacy):
    """{gguf name: f32 numpy array} from the save_pretrained (legacy layout) state dict, the way
    convert_hf_to_gguf.py's LlamaModel / Qwen2MoeModel convert it: names from gguf-py's
    TensorNameMap, per-expert matrices stacked into (E, rows, cols), llama q/k rows permuted."""
    names = gguf.TensorNameMap(arch, cfg.num_hidden_layers)
    E = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    valid = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    out = {}

    def put(hf_name, t, suffix):
        new = names.get_name(hf_name)
        assert new is not None, hf_name
        bid = int(hf_name.split(".")[2]) if ".layers." in hf_name else None
        assert (new if bid is None else new.replace(f"blk.{bid}.", "blk.{bid}.")) in valid, new
        new += suffix
        assert new not in out, new
        out[new] = t.float().numpy()

    experts = {}
    for k, t in legacy.items():
        base, suffix = k.rsplit(".", 1)
        suffix = "." + suffix
        if ".experts." in k:  # model.layers.{i}.(block_sparse_moe|mlp).experts.{e}.{w}.weight
            parts = base.split(".")
            e = int(parts[-2])
            key = ".".join(parts[:-2] + parts[-1:])  # ...experts.w1
            experts.setdefault(key, {})[e] = t
            continue
        if arch == gguf.MODEL_ARCH.LLAMA and k.endswith("self_attn.q_proj.weight"):
            t = permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and k.endswith("self_attn.k_proj.weight"):
            t = permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        elif k.endswith("shared_expert_gate.weight"):
            assert t.shape == (1, cfg.hidden_size)
            t = t.reshape(cfg.hidden_size)  # llama.cpp: ffn_gate_inp_shexp is {n_embd}
        put(base, t, suffix)
    for key, per in experts.items():
        assert sorted(per) == list(range(E)), key
        put(key, torch.stack([per[e] for e in range(E)]), ".weight")
    return dict(sorted(out.items(), key=lambda kv: gguf_order(kv[0])))


def gguf_order(n):
    """token_embd, blocks in order, output_norm, output -- the converter's order (roughly)."""
    if n.startswith("blk."):
        return (1, int(n.split(".")[1]), n)
    return (0 if n.startswith("token_embd") else 2, 0, n)


def write_gguf_meta(w, arch, cfg, tok, file_type):
    """Metadata as convert_hf_to_gguf.py's TextModel.set_gguf_parameters (+ LlamaModel /
    Qwen2MoeModel) writes it for these configs, and the tokenizer as make_decoder_fixtures.py's
    make_gguf writes it (gpt2 BPE, pre gpt-2, <|endoftext|> = bos = eos = 0, CONTROL)."""
    E = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_expert_count(E)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    # TextModel: config.json has head_dim -> attention.key_length / value_length
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    if arch == gguf.MODEL_ARCH.LLAMA:
        # LlamaModel.set_gguf_parameters adds the vocabulary size and rope dimension count
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(cfg.head_dim)
    else:
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    w.add_file_type(file_type)
    mdf.add_gguf_tokenizer(w, tok)


def write_gguf(path, arch, cfg, tok, tensors, quantize_exps=False):
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if quantize_exps else gguf.LlamaFileType.ALL_F32
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    write_gguf_meta(w, arch, cfg, tok, ftype)
    for n, a in tensors.items():
        assert a.dtype == np.float32
        if quantize_exps and n.endswith("_exps.weight"):
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(n, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf(path):
    """(metadata {key: value}, {name: (ggml type name, numpy shape, dequantized f32 array)})."""
    r = gguf.GGUFReader(path)
    meta = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        if f.name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            meta[f.name] = f"[{len(f.data)} entries]"
            continue
        v = f.contents()
        meta[f.name] = v
    tensors = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = (t.tensor_type.name, shape, np.array(a, dtype=np.float32))
    return meta, tensors


def hf_state_from_gguf(arch, cfg, g):
    """The fused in-memory transformers state dict back from GGUF tensors (inverse of
    gguf_tensors), for the round-trip check."""
    state = {"model.embed_tokens.weight": g["token_embd.weight"],
             "model.norm.weight": g["output_norm.weight"], "lm_head.weight": g["output.weight"]}
    for i in range(cfg.num_hidden_layers):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        q, kk = g[b + "attn_q.weight"], g[b + "attn_k.weight"]
        if arch == gguf.MODEL_ARCH.LLAMA:
            q = unpermute(q, cfg.num_attention_heads)
            kk = unpermute(kk, cfg.num_key_value_heads)
        state.update({
            p + "input_layernorm.weight": g[b + "attn_norm.weight"],
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": kk,
            p + "self_attn.v_proj.weight": g[b + "attn_v.weight"],
            p + "self_attn.o_proj.weight": g[b + "attn_output.weight"],
            p + "post_attention_layernorm.weight": g[b + "ffn_norm.weight"],
            p + "mlp.gate.weight": g[b + "ffn_gate_inp.weight"],
            p + "mlp.experts.gate_up_proj": np.concatenate(
                [g[b + "ffn_gate_exps.weight"], g[b + "ffn_up_exps.weight"]], axis=1),
            p + "mlp.experts.down_proj": g[b + "ffn_down_exps.weight"],
        })
        if arch == gguf.MODEL_ARCH.QWEN2MOE:
            for x in "qkv":
                state[p + f"self_attn.{x}_proj.bias"] = g[b + f"attn_{x}.bias"]
            for x in ("gate", "up", "down"):
                state[p + f"mlp.shared_expert.{x}_proj.weight"] = g[b + f"ffn_{x}_shexp.weight"]
            state[p + "mlp.shared_expert_gate.weight"] = g[b + "ffn_gate_inp_shexp.weight"][None]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def load_state(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(state, strict=True)
    return m.eval()


def gguf_greedy(model, prompt):
    new, step_logits, routing = capture_routing_during_generate(model, prompt)
    new_nc, _ = mf.greedy_no_cache(model, prompt)
    assert torch.equal(new, new_nc)
    return new, step_logits, routing


def write_gguf_fixture(family, model, tensors_ref, facts, tok, src_dir, out_root):
    arch = {"mixtral": gguf.MODEL_ARCH.LLAMA, "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE}[family]
    cfg = model.config
    k = facts["top_k"]
    d = fresh_dir(out_root, f"{family}_gguf")
    with safe_open(os.path.join(src_dir, "model.safetensors"), "pt") as f:
        legacy = {n: f.get_tensor(n) for n in f.keys()}
    tensors = gguf_tensors(arch, cfg, legacy)
    write_gguf(os.path.join(d, "model.gguf"), arch, cfg, tok, tensors)
    meta, back = read_gguf(os.path.join(d, "model.gguf"))
    assert list(back) == list(tensors)
    for n, a in tensors.items():
        assert back[n][0] == "F32" and back[n][1] == a.shape and np.array_equal(back[n][2], a), n
    ids, want = tensors_ref["input_ids"], tensors_ref["logits"]
    g32 = {n: v[2] for n, v in back.items()}
    m32 = load_state(model, hf_state_from_gguf(arch, cfg, g32))
    assert torch.equal(mf.forward(m32, ids)[0], want), f"{family}_gguf: round trip differs"
    prompt = tensors_ref["greedy_prompt"]
    ref_tensors = {"input_ids": ids, "logits": want, "greedy_prompt": prompt,
                   "greedy_ids": tensors_ref["greedy_ids"]}
    tensor_table = {n: f"{v[0]} numpy {list(v[1])} ne {list(reversed(v[1]))}"
                    for n, v in back.items()}
    extra = {}
    files = {"model.gguf": {"file_type": "ALL_F32 (0)", "tensors": tensor_table,
                            "metadata": meta}}
    if family == "mixtral":
        qpath = os.path.join(d, "model-q8_0.gguf")
        write_gguf(qpath, arch, cfg, tok, tensors, quantize_exps=True)
        qmeta, qback = read_gguf(qpath)
        assert list(qback) == list(tensors)
        for n, a in tensors.items():
            want_type = "Q8_0" if n.endswith("_exps.weight") else "F32"
            assert qback[n][0] == want_type and qback[n][1] == a.shape, n
            if want_type == "F32":
                assert np.array_equal(qback[n][2], a), n
        gq = {n: v[2] for n, v in qback.items()}
        # the dequantized values are exactly what gguf.quants.dequantize(quantize(a)) gives
        for n in tensors:
            if n.endswith("_exps.weight"):
                rt = gguf.quants.dequantize(
                    gguf.quants.quantize(tensors[n], gguf.GGMLQuantizationType.Q8_0),
                    gguf.GGMLQuantizationType.Q8_0)
                assert np.array_equal(rt, gq[n]), n
        mq = load_state(model, hf_state_from_gguf(arch, cfg, gq))
        q_logits = mf.forward(mq, ids)[0]
        q_out = moe_forward(mq, ids)
        q_new, q_steps, q_routing = gguf_greedy(mq, prompt)
        q_margin = mf.margins(q_steps).min().item()
        q_seq = moe_forward(mq, torch.cat([prompt, q_new])).router_logits
        q_rmargin = min(router_margin(q_out.router_logits, k), router_margin(q_routing, k),
                        router_margin(q_seq, k))
        # informational: the q8_0 references need not be as decisive as the f32 ones
        q_decisive = q_margin > MIN_MARGIN and q_rmargin > MIN_ROUTER_MARGIN
        q_picks = [torch.topk(torch.softmax(rl, -1), k, -1).indices.sort(-1).values
                   for rl in q_out.router_logits]
        f_picks = [torch.topk(torch.softmax(tensors_ref[f"router_logits.{j}"], -1), k,
                              -1).indices.sort(-1).values for j in range(len(q_picks))]
        ref_tensors["q8_0_logits"] = q_logits.detach().contiguous()
        if q_decisive:
            ref_tensors["q8_0_greedy_ids"] = q_new.contiguous()
        extra.update({
            "q8_0_logits_max_abs_diff": (q_logits - want).abs().max().item(),
            "q8_0_greedy_ids_equal_f32": bool(torch.equal(q_new, tensors_ref["greedy_ids"])),
            "q8_0_greedy_min_top1_top2_margin": q_margin,
            "q8_0_router_min_topk_margin": q_rmargin,
            "q8_0_greedy_ids_stored": q_decisive,
            "q8_0_same_experts_as_f32_on_input_ids": all(
                torch.equal(a, b) for a, b in zip(q_picks, f_picks)),
        })
        files["model-q8_0.gguf"] = {
            "file_type": "MOSTLY_Q8_0 (7)",
            "tensors": {n: f"{v[0]} numpy {list(v[1])} ne {list(reversed(v[1]))}"
                        for n, v in qback.items()},
            "metadata_differs_from_model_gguf": {
                kk: qmeta[kk] for kk in qmeta if qmeta[kk] != meta.get(kk)},
        }
    save_file({n: v.contiguous() for n, v in ref_tensors.items()},
              os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "architecture": f"{type(model).__name__} (GGUF arch {gguf.MODEL_ARCH_NAMES[arch]})",
        "twin": family,
        **versions(),
        "notes": (
            f"The {family} fixture as llama.cpp's convert_hf_to_gguf.py --outtype f32 writes it "
            f"({'LlamaModel' if family == 'mixtral' else 'Qwen2MoeModel'}): tensor names from "
            "gguf-py's TensorNameMap on save_pretrained's legacy names (each checked valid for "
            "the arch in gguf.MODEL_TENSORS), per-expert matrices stacked along a new leading "
            "expert axis (numpy (E, rows, cols) = GGUF ne [cols, rows, E]): ffn_gate_exps = "
            "stack(gate / w1) (E, I, H), ffn_up_exps = stack(up / w3) (E, I, H), ffn_down_exps = "
            "stack(down / w2) (E, H, I); ffn_gate_inp = the router (E, H). "
            + ("attn_q / attn_k rows permuted per head as LlamaModel.permute does (q with "
               "n_head, k with n_head_kv): HF's rotate-half pairs (i, i+d/2) become llama.cpp's "
               "adjacent pairs (2i, 2i+1); undo it to get HF's q_proj/k_proj. model-q8_0.gguf: "
               "the same file with ONLY the three *_exps tensors Q8_0 (gguf.quants.quantize; "
               "blocks of 32 along ne0 = the input dimension), file_type MOSTLY_Q8_0; "
               "q8_0_logits / q8_0_greedy_ids are transformers on the Q8_0-dequantized expert "
               "weights (every other tensor f32 as in model.gguf)."
               if family == "mixtral" else
               "No q/k permutation (qwen2moe uses NEOX rope, like HF). q/k/v biases as "
               "attn_{q,k,v}.bias; shared expert as ffn_{gate,up,down}_shexp; "
               "shared_expert_gate (1, H) written as the 1-D ffn_gate_inp_shexp.weight (H,) "
               "(llama.cpp creates it as {n_embd}).")
            + " All tensors f32 in model.gguf, so `logits` (= the safetensors twin's, "
            "bit-identical: transformers on the weights read back from the file, checked) is "
            "exact. Tokenizer metadata as make_decoder_fixtures.py's GGUFs (gpt2 BPE, pre "
            "gpt-2, id 0 <|endoftext|> CONTROL = bos = eos)."),
        "greedy_min_top1_top2_margin": facts["greedy_min_top1_top2_margin"],
        "router_min_topk_margin": facts["router_min_topk_margin"],
        "score_text": facts["score_text"],
        "score_ids": facts["score_ids"],
        "score_perplexity": facts["score_perplexity"],
        **extra,
        "files": files,
    }
    write_json(os.path.join(d, "reference.json"), ref)
    return d


# ---------------------------------------------------------------------------------------------


def make(name, tok, out_root, search=False):
    seed = MODELS[name][3]
    while True:
        try:
            model, tensors, facts = compute(name, seed, tok)
            d, ref = write_fixture(name, model, tensors, facts, tok, seed, out_root)
            dirs = [d]
            if name == "mixtral":
                dirs.append(write_mixtral_fused(model, d, ref, out_root))
            if name in ("mixtral", "qwen2_moe"):
                dirs.append(write_gguf_fixture(name, model, tensors, facts, tok, d, out_root))
            break
        except Reject as e:
            if not search:
                raise SystemExit(f"{name}: seed {seed}: {e} (run with --search)")
            print(f"{name}: seed {seed} rejected: {e}")
            seed += 1
    print(f"{name}: seed {seed}, sparse layers {facts['sparse_layers']}, "
          f"router margin {facts['router_min_topk_margin']:.4f}, "
          f"greedy margin {facts['greedy_min_top1_top2_margin']:.3f}, "
          f"aux_loss {facts['aux_loss']:.6f}, ppl {facts['score_perplexity']:.2f}")
    for dd in dirs:
        print(f"  {os.path.basename(dd)}: {dir_size(dd) / 1024:.0f} KiB  "
              + ", ".join(f"{f} {os.path.getsize(os.path.join(dd, f)) / 1024:.0f}K"
                          for f in sorted(os.listdir(dd))))
    return sum(dir_size(dd) for dd in dirs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None,
                    help=f"models to regenerate ({', '.join(MODELS)}; a derived directory "
                         f"({', '.join(DERIVED)}) regenerates with its model)")
    ap.add_argument("--check", action="store_true",
                    help="compute, write and verify everything in a temporary directory; "
                         "leave tests/fixtures untouched")
    ap.add_argument("--search", action="store_true",
                    help="on a too-small margin try the next seed instead of failing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    names = []
    for n in args.only or MODELS:
        n = DERIVED.get(n, n)
        if n not in MODELS:
            raise SystemExit(f"unknown fixture {n!r}")
        if n not in names:
            names.append(n)
    tok = mdf.train_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        out_root = tmp if args.check else OUT
        total = sum(make(n, tok, out_root, search=args.search) for n in names)
        print(f"total {total / 1024:.0f} KiB" + (" (check: nothing written)" if args.check else ""))


if __name__ == "__main__":
    main()
