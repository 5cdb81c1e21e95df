#!/usr/bin/env python3
"""Golden fixtures for kiln's mixture-of-experts decoders, made with Hugging Face transformers.

tests/fixtures/<name>/ in the layout of tools/make_fixtures.py (crates/kiln-models/tests/common):
  config.json, generation_config.json, model.safetensors (save_pretrained: one tensor per
  expert), tokenizer.json (tools/make_decoder_fixtures.py's BPE, vocab 384)
  reference.safetensors  input_ids, hidden_states.{i}, last_layer_pre_norm, logits, greedy_prompt,
                         greedy_ids, greedy_step_logits, score_ids, router_logits.{j} (j-th sparse
                         layer, (n_tokens, n_experts)), expert_counts (int64, (n_sparse, n_experts):
                         tokens that picked each expert among their top k), aux_loss ([1]: the
                         model's aux_loss output, load_balancing_loss_func over every sparse layer
                         without attention mask, before router_aux_loss_coef)
  reference.json         versions, sparse_layers, n_experts, top_k, norm_topk_prob, aux_loss,
                         router_aux_loss_coef, router_min_topk_margin, greedy margin, perplexity
Models: mixtral (MixtralForCausalLM), mixtral_fused (the same weights, model.safetensors in
transformers 5's fused layout: mlp.gate, mlp.experts.gate_up_proj (E, 2I, H), mlp.experts.down_proj
(E, H, I)), qwen2_moe (shared expert with sigmoid gate, norm_topk_prob False, q/k/v biases),
qwen3_moe (per-head q/k RMSNorm, norm_topk_prob True, mlp_only_layers [1]: dense and sparse layers
mixed), olmoe (q/k RMSNorm over the whole projections).
GGUF twins, written as convert_hf_to_gguf.py does but --outtype f32 so they are exact:
  mixtral_gguf/model.gguf       arch llama + expert_count/expert_used_count; q/k rows permuted
                                (LlamaModel.permute); ffn_gate_inp, ffn_{gate,up,down}_exps stacks
  mixtral_gguf/model-q8_0.gguf  the same with the three expert stacks in Q8_0 (gguf.quants);
                                reference q8_0_logits: transformers on the dequantized stacks
  qwen2_moe_gguf/model.gguf     arch qwen2moe (no permutation), shared expert *_shexp and the
                                (H,) ffn_gate_inp_shexp
Routing is decisive: for every token of input_ids and of the greedy sequence, in every sparse
layer, the k-th and (k+1)-th router logits differ by more than MIN_ROUTER_MARGIN (asserted; seeds
chosen so), so an engine within float rounding picks the same experts.

Run from the repository root:  python tools/make_moe_fixtures.py [--only NAME ...] [--check]
"""

import argparse
import copy
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
from safetensors.torch import save_file
from transformers import (MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,
                          Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_decoder_fixtures as mdf  # noqa: E402  (tokenizer and constants shared)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
VOCAB = mdf.VOCAB
N_INPUT = 24
N_PROMPT = 8
N_NEW = 16
MIN_MARGIN = 0.02
MIN_ROUTER_MARGIN = 1e-3

COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=128,
              tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
ROPE = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

# name -> (model class, config class, config kwargs, first seed, notes)
MODELS = {
    "mixtral": (MixtralForCausalLM, MixtralConfig,
                dict(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                     intermediate_size=32, sliding_window=None),
                1, "Mixtral: 4 experts, top-2, renormalized router (always, no config key)."),
    "qwen2_moe": (Qwen2MoeForCausalLM, Qwen2MoeConfig,
                  dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       intermediate_size=96, norm_topk_prob=False, decoder_sparse_step=1,
                       mlp_only_layers=[], use_sliding_window=False),
                  11, "Qwen2-MoE: shared expert (48) scaled by sigmoid(shared_expert_gate . x), "
                      "top-k weights not renormalized, random q/k/v biases."),
    "qwen3_moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig,
                  dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, intermediate_size=96, norm_topk_prob=True,
                       decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False),
                  21, "Qwen3-MoE: per-head q_norm/k_norm (head_dim), renormalized top-k, layer 1 "
                      "a dense MLP (mlp_only_layers [1])."),
    "olmoe": (OlmoeForCausalLM, OlmoeConfig,
              dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                   intermediate_size=32, norm_topk_prob=False, clip_qkv=None),
              31, "OLMoE: q_norm/k_norm over the whole q (n_heads*head_dim) and k "
                  "(n_kv_heads*head_dim) projections, top-k weights not renormalized."),
}


def reinit_(model, seed):
    """Large random weights: matrices (expert stacks included) N(0, 0.2), biases N(0, 0.2),
    norm weights 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def forward(model, ids):
    """(logits, hidden_states, last block output before the norm, router logits, aux_loss)."""
    captured = {}
    last = model.model.layers[-1]
    hook = last.register_forward_hook(
        lambda mod, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(ids[None], output_hidden_states=True, output_router_logits=True,
                        use_cache=False)
    finally:
        hook.remove()
    h = captured["h"]
    h = h[0] if h.dim() == 3 else h
    return (out.logits[0], [x[0] for x in out.hidden_states], h,
            [r.reshape(-1, r.shape[-1]) for r in out.router_logits], out.aux_loss)


def router_margin(routers, k):
    m = math.inf
    for r in routers:
        top = r.topk(k + 1, dim=-1).values
        m = min(m, (top[:, k - 1] - top[:, k]).min().item())
    return m


def greedy(model, prompt):
    with torch.no_grad():
        out = model.generate(prompt[None], do_sample=False, max_new_tokens=N_NEW,
                             min_new_tokens=N_NEW, eos_token_id=None, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True,
                             attention_mask=torch.ones_like(prompt)[None])
    new = out.sequences[0, prompt.numel():]
    steps = torch.stack([l[0] for l in out.logits])
    assert torch.equal(steps.argmax(-1), new)
    seq = prompt.clone()
    with torch.no_grad():
        for t in range(N_NEW):
            l = model(seq[None], use_cache=False).logits[0, -1]
            assert (l - steps[t]).abs().max() < 1e-4, "cached vs uncached greedy"
            seq = torch.cat([seq, l.argmax()[None]])
    assert torch.equal(seq[prompt.numel():], new)
    top2 = steps.topk(2, dim=-1).values
    return new, steps, (top2[:, 0] - top2[:, 1]).min().item(), seq


def sparse_layers(cfg):
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    only = getattr(cfg, "mlp_only_layers", []) or []
    return [i for i in range(cfg.num_hidden_layers) if i not in only and (i + 1) % step == 0]


def build(name):
    """The first seed from the table's on whose model every greedy and routing margin holds."""
    cls, cfg_cls, kw, seed, _ = MODELS[name]
    for s in range(seed, seed + 200):
        torch.manual_seed(s)
        cfg = cfg_cls(attn_implementation="eager", **COMMON, **ROPE, **kw)
        model = cls(cfg)
        reinit_(model, s)
        model.eval()
        g = torch.Generator().manual_seed(s)
        ids = torch.randint(0, VOCAB, (N_INPUT,), generator=g, dtype=torch.int64)
        k = cfg.num_experts_per_tok
        res = forward(model, ids)
        m_in = router_margin(res[3], k)
        if m_in < MIN_ROUTER_MARGIN:
            continue
        new, steps, margin, seq = greedy(model, ids[:N_PROMPT].clone())
        if margin < MIN_MARGIN:
            continue
        m_seq = router_margin(forward(model, seq)[3], k)
        if m_seq < MIN_ROUTER_MARGIN:
            continue
        return model, cfg, s, ids, res, (new, steps, margin), min(m_in, m_seq)
    raise SystemExit(f"{name}: no seed with decisive routing")


def make_one(name, tok, only_check):
    model, cfg, seed, ids, (logits, hs, pre_norm, routers, aux), (new, steps, margin), rmargin = \
        build(name)
    k, n_exp = cfg.num_experts_per_tok, getattr(cfg, "num_local_experts", None) or cfg.num_experts
    sparse = sparse_layers(cfg)
    assert len(routers) == len(sparse), (len(routers), sparse)
    counts = torch.zeros(len(sparse), n_exp, dtype=torch.int64)
    for j, r in enumerate(routers):
        for e in r.topk(k, dim=-1).indices.flatten().tolist():
            counts[j, e] += 1
    # aux_loss as load_balancing_loss_func computes it, recomputed here from the router logits.
    cat = torch.cat(routers)
    probs = torch.softmax(cat, dim=-1)
    mask = torch.nn.functional.one_hot(probs.topk(k, dim=-1).indices, n_exp).float()
    mine = (mask.mean(0) * probs.mean(0)[None]).sum() * n_exp
    assert torch.allclose(mine, aux.float(), atol=1e-6), (mine, aux)
    score_ids = torch.tensor(tok.encode(mdf.SCORE_TEXT, add_special_tokens=False).ids)
    with torch.no_grad():
        loss = model(score_ids[None], labels=score_ids[None], use_cache=False).loss
    ppl = math.exp(loss.item())
    print(f"{name}: seed {seed}, greedy margin {margin:.3f}, router margin {rmargin:.2e}, "
          f"aux {aux.item():.5f}, counts {counts.tolist()}, ppl {ppl:.3f}")
    if only_check:
        return model, ids, logits
    tensors = {"input_ids": ids, "logits": logits, "last_layer_pre_norm": pre_norm,
               "greedy_prompt": ids[:N_PROMPT].clone(), "greedy_ids": new,
               "greedy_step_logits": steps, "score_ids": score_ids, "expert_counts": counts,
               "aux_loss": aux.float().reshape(1)}
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = h
    for j, r in enumerate(routers):
        tensors[f"router_logits.{j}"] = r
    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(os.listdir(tmp)):
            shutil.copy(os.path.join(tmp, f), os.path.join(d, f))
    tok.save(os.path.join(d, "tokenizer.json"))
    cls = MODELS[name][0]
    reloaded = cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    assert torch.equal(forward(reloaded, ids)[0], logits), "reloaded model differs"
    save_file({k_: v.contiguous() for k_, v in tensors.items()},
              os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "architecture": cls.__name__, "model_type": cfg.model_type,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__, "seed": seed,
        "n_layers": cfg.num_hidden_layers, "n_tokens": N_INPUT, "sparse_layers": sparse,
        "n_experts": n_exp, "top_k": k,
        "norm_topk_prob": bool(getattr(cfg, "norm_topk_prob", True)),
        "router_aux_loss_coef": cfg.router_aux_loss_coef, "aux_loss": aux.item(),
        "aux_loss_note": "the model's aux_loss output with output_router_logits=True: "
                         "load_balancing_loss_func(router_logits of every sparse layer, "
                         "num_experts, top_k, attention_mask=None), before "
                         "router_aux_loss_coef (which only the training loss applies)",
        "expert_counts": counts.tolist(), "router_min_topk_margin": rmargin,
        "greedy_min_top1_top2_margin": margin, "score_text": mdf.SCORE_TEXT,
        "score_perplexity": ppl,
        "hidden_states": "hidden_states.0 is the embedding output; hidden_states.i the output of "
                         "block i-1; the last is the final norm of last_layer_pre_norm",
        "init": "matrices (expert stacks too) and biases N(0, 0.2), norm weights 1 + N(0, 0.1)",
        "notes": MODELS[name][4],
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    if name == "mixtral":
        make_fused(d, model, ids, logits)
    return model, ids, logits


def make_fused(src, model, ids, logits):
    """mixtral_fused: the in-memory (transformers 5) names and shapes, one 3-D tensor per stack."""
    d = os.path.join(OUT, "mixtral_fused")
    if os.path.exists(d):
        shutil.rmtree(d)
    shutil.copytree(src, d)
    os.remove(os.path.join(d, "model.safetensors"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state), sorted(state)
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    reloaded = MixtralForCausalLM.from_pretrained(d, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    assert torch.equal(forward(reloaded, ids)[0], logits), "fused layout loads differently"
    ref = json.load(open(os.path.join(d, "reference.json")))
    ref["notes"] += (" model.safetensors in transformers 5's fused layout (mlp.gate.weight, "
                     "mlp.experts.gate_up_proj (E, 2I, H) gate rows then up rows, "
                     "mlp.experts.down_proj (E, H, I)); from_pretrained loads it to identical "
                     "logits.")
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print("mixtral_fused: written")


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute: rows regrouped for interleaved rotary pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(model, arch):
    """(gguf name, f32 array) as convert_hf_to_gguf.py writes them for `arch`."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    I = cfg.intermediate_size if arch == "llama" else cfg.moe_intermediate_size
    out = [("token_embd.weight", sd["model.embed_tokens.weight"]),
           ("output_norm.weight", sd["model.norm.weight"]),
           ("output.weight", sd["lm_head.weight"])]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q = permute(q, cfg.num_attention_heads)
            k = permute(k, cfg.num_attention_heads, cfg.num_key_value_heads)
        out += [(b + "attn_norm.weight", sd[p + "input_layernorm.weight"]),
                (b + "attn_q.weight", q), (b + "attn_k.weight", k),
                (b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"]),
                (b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]),
                (b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]),
                (b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])]
        if arch == "qwen2moe":
            for x in "qkv":
                out.append((b + f"attn_{x}.bias", sd[p + f"self_attn.{x}_proj.bias"]))
        gu = sd[p + "mlp.experts.gate_up_proj"]
        out += [(b + "ffn_gate_exps.weight", gu[:, :I]), (b + "ffn_up_exps.weight", gu[:, I:]),
                (b + "ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"])]
        if arch == "qwen2moe":
            for x in ("gate", "up", "down"):
                out.append((b + f"ffn_{x}_shexp.weight", sd[p + f"mlp.shared_expert.{x}_proj.weight"]))
            out.append((b + "ffn_gate_inp_shexp.weight", sd[p + "mlp.shared_expert_gate.weight"][0]))
    return out


def write_gguf(path, model, tok, arch, quant_exps=False):
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    n_exp = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch == "qwen2moe":
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = json.loads(tok.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == mdf.EOT else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    dequantized = {}
    for name, t in gguf_tensors(model, arch):
        a = t.contiguous().numpy().astype(np.float32)
        if quant_exps and name.endswith("_exps.weight"):
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            dequantized[name] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dequantized


def make_gguf(name, model, tok, ids, logits, arch):
    d = os.path.join(OUT, f"{name}_gguf")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    write_gguf(os.path.join(d, "model.gguf"), model, tok, arch)
    tensors = {"input_ids": ids, "logits": logits}
    ref = {"architecture": f"{type(model).__name__} (GGUF {arch})",
           "transformers_version": transformers.__version__,
           "gguf_version": getattr(gguf, "__version__", "?"),
           "twin": name,
           "notes": f"tests/fixtures/{name} as convert_hf_to_gguf.py writes it but all tensors "
                    f"f32: input_ids/logits are the twin's (exact)."}
    if name == "mixtral":
        deq = write_gguf(os.path.join(d, "model-q8_0.gguf"), model, tok, arch, quant_exps=True)
        qmodel = copy.deepcopy(model)
        I = model.config.intermediate_size
        with torch.no_grad():
            for i, layer in enumerate(qmodel.model.layers):
                b = f"blk.{i}."
                g = torch.from_numpy(deq[b + "ffn_gate_exps.weight"])
                u = torch.from_numpy(deq[b + "ffn_up_exps.weight"])
                layer.mlp.experts.gate_up_proj.copy_(torch.cat([g, u], dim=1))
                layer.mlp.experts.down_proj.copy_(torch.from_numpy(deq[b + "ffn_down_exps.weight"]))
                assert layer.mlp.experts.gate_up_proj.shape[1] == 2 * I
        ql = forward(qmodel, ids)[0]
        tensors["q8_0_logits"] = ql
        ref["q8_0_logits_max_abs_diff"] = (ql - logits).abs().max().item()
        ref["q8_0"] = ("model-q8_0.gguf: the three ffn_*_exps stacks in Q8_0 (gguf.quants), the "
                       "rest f32; q8_0_logits: transformers with those stacks dequantized.")
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(f"{name}_gguf: written {sorted(os.listdir(d))}")


GGUF_TWINS = {"mixtral": "llama", "qwen2_moe": "qwen2moe"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = mdf.train_tokenizer()
    for name in MODELS:
        if a.only and name not in a.only:
            continue
        model, ids, logits = make_one(name, tok, a.check)
        if name in GGUF_TWINS and not a.check:
            make_gguf(name, model, tok, ids, logits, GGUF_TWINS[name])


if __name__ == "__main__":
    main()
