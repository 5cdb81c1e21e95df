#!/usr/bin/env python3
"""Beam-search reference outputs for kiln's tiny causal fixture models (transformers generate).

For each model in MODELS this loads tests/fixtures/<name>/{config.json,model.safetensors} (made by
make_fixtures.py; not modified here) and writes tests/fixtures/<name>/beam.json: for several
beam-search settings, the `num_return_sequences` hypotheses of
`model.generate(num_beams=..., do_sample=False, ...)` (generated ids only, the final EOS included,
exactly as HF's `sequences` minus prompt and padding) and their `sequences_scores`.

The prompt is 8 consecutive ids of reference.safetensors' input_ids (the first window free of
near ties, see below); each setting records the prompt it used (`ngram_2_repeat*` extend it).
The EOS id is chosen per model from an EOS-free run (see choose_eos) so that a hypothesis finishes
by EOS inside the beam window and the finished-hypothesis logic is exercised; the script asserts
that it does.

Ties: every top-k selection inside HF's beam search (candidates, next running beams, kept
finished hypotheses) and the early-stop comparison is recorded by wrapping torch.topk and
`_check_early_stop_heuristic`; the script asserts that every decisive gap (between consecutive
real scores up to the k-th + 1, ignoring the -1e9-offset scores HF uses to exclude beams) is at
least MIN_MARGIN, so an engine matching to float rounding must pick the same beams. The smallest
gap of each setting is stored as `min_margin`.

Run from the repository root:  python tools/make_beam_fixtures.py [--check] [--only NAME ...]
"""

import argparse
import json
import os

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.generation.utils import GenerationMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MODELS = ["llama", "llama_tied_mqa", "mistral", "qwen2"]
MAX_NEW = 12
N_PROMPT = 8
MIN_MARGIN = 1e-3
REAL = -1e8  # scores below this carry HF's -1e9 exclusion offset (or are -inf): not decisive

GAPS = []  # decisive gaps seen since the last reset


def _gaps(values, positions):
    """Per row, the gaps values[i-1] - values[i] (descending order) at each i in `positions`,
    skipping pairs where either value is not real."""
    top = torch.sort(values.detach().float(), dim=-1, descending=True).values
    top = top.reshape(-1, top.shape[-1])[:, : max(positions) + 1].tolist()
    return [row[i - 1] - row[i] for row in top for i in positions if i < len(row) and row[i] > REAL]


def _decisive_gaps(values, k):
    """The gaps that decide a top-k call of HF's beam search, told apart by the input width.

    - candidates (num_beams * vocab wide, k = K): the num_beams boundary decides which candidates
      may finish, so it counts when a stopping token (EOS, or any token on the last step) is at
      it; the K boundary counts when at most num_beams of the top K can keep running (then the
      K-th may become a running beam). Other near ties among candidates are settled again by the
      next two calls, which see the same values.
    - next running beams (K wide, k = num_beams): the boundary.
    - kept finished hypotheses (num_beams + K wide): membership and order (the output order)."""
    width = values.shape[-1]
    nb, keep = RUN["num_beams"], RUN["keep"]
    if k == nb and width == nb + keep:
        return _gaps(values, list(range(1, k + 1)))
    if k == nb and width == keep:
        return _gaps(values, [nb])
    # candidates
    step = RUN["step"]
    RUN["step"] += 1
    last = step + 1 >= RUN["max_new_tokens"]
    vocab = width // nb
    order = torch.argsort(values.detach().float().reshape(-1), descending=True)[: k + 1].tolist()
    stops = [last or (i % vocab) in RUN["eos"] for i in order]
    positions = []
    if stops[nb - 1] or stops[nb]:
        positions.append(nb)
    if k - sum(stops[:k]) <= nb:
        positions.append(k)
    return _gaps(values, positions) if positions else []


REPEAT_FREE = {}  # model -> ngram_2_repeat's hypotheses without the ban
RUN = {}  # the current run's num_beams, K, EOS ids, max_new_tokens and step


_topk = torch.topk


def _recording_topk(input, k, *args, **kwargs):
    GAPS.extend(_decisive_gaps(input, k))
    return _topk(input, k, *args, **kwargs)


_heuristic = GenerationMixin._check_early_stop_heuristic


def _recording_heuristic(**kw):
    is_unsat, running = kw["is_early_stop_heuristic_unsatisfied"], kw["running_beam_scores"]
    beam_scores, is_fin, cur_len = kw["beam_scores"], kw["is_sent_finished"], kw["cur_len"]
    max_length, prompt_len = kw["max_length"], kw["decoder_prompt_len"]
    early_stopping, lp = kw["early_stopping"], kw["length_penalty"]
    # Same arithmetic as HF; the comparison only decides anything once every slot is finished.
    if bool(is_unsat.all()) and bool(is_fin.all()):
        if early_stopping == "never" and lp > 0.0:
            n = max_length - prompt_len
        else:
            n = cur_len - prompt_len
        best = running[:, :1] / (n**lp)
        worst = torch.min(beam_scores, dim=1, keepdim=True)[0]
        GAPS.append(float((best - worst).abs().min()))
    return _heuristic(**kw)


def beam(model, prompt, **kw):
    """Runs HF beam search; returns [{tokens, score}] best first and the smallest decisive gap."""
    GAPS.clear()
    eos = kw["eos_token_id"] or []
    RUN.update(num_beams=kw["num_beams"], keep=max(2, 1 + len(eos)) * kw["num_beams"], eos=set(eos),
               max_new_tokens=kw["max_new_tokens"], step=0)
    torch.topk = _recording_topk
    GenerationMixin._check_early_stop_heuristic = staticmethod(_recording_heuristic)
    try:
        out = model.generate(
            input_ids=prompt[None],
            attention_mask=torch.ones_like(prompt)[None],
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
    finally:
        torch.topk = _topk
        GenerationMixin._check_early_stop_heuristic = staticmethod(_heuristic)
    n_prompt = prompt.shape[0]
    seqs = []
    for row, idx, score in zip(out.sequences, out.beam_indices, out.sequences_scores):
        n_gen = int((idx != -1).sum())  # HF's own way of telling generated length from padding
        seqs.append({"tokens": row[n_prompt : n_prompt + n_gen].tolist(), "score": float(score)})
    return seqs, min(GAPS, default=float("inf"))


def eos_choices(model, prompt):
    """Ids the beams generate a few tokens in (the 3rd/4th token of the EOS-free beams), a second
    id for the two-EOS setting, and six such ids for the many-EOS settings (where every beam slot
    finishes early, so early_stopping matters)."""
    seqs, _ = beam(model, prompt, num_beams=4, max_new_tokens=MAX_NEW, num_return_sequences=4, eos_token_id=None)
    many = []
    for pos in [1, 2, 3]:
        for s in seqs:
            if s["tokens"][pos] not in many:
                many.append(s["tokens"][pos])
    for rank, pos in [(1, 2), (0, 3), (2, 2), (3, 3), (1, 4)]:
        eos = seqs[rank]["tokens"][pos]
        yield eos, next(t for s in seqs for t in s["tokens"] if t != eos), many[:6]


def settings(eos, eos2, many):
    base = dict(num_beams=4, max_new_tokens=MAX_NEW, length_penalty=1.0, early_stopping=False,
                no_repeat_ngram_size=0, num_return_sequences=4, min_new_tokens=0, eos_token_id=[eos])
    variants = [
        ("base", {}),
        ("length_penalty_0.5", dict(length_penalty=0.5)),
        ("length_penalty_2.0", dict(length_penalty=2.0)),
        ("length_penalty_-1.0", dict(length_penalty=-1.0)),
        ("early_stopping_true", dict(early_stopping=True)),
        ("early_stopping_never", dict(early_stopping="never")),
        ("early_stopping_never_lp0", dict(early_stopping="never", length_penalty=0.0)),
        ("no_repeat_ngram_2", dict(no_repeat_ngram_size=2)),
        ("return_1", dict(num_return_sequences=1)),
        ("return_2", dict(num_return_sequences=2)),
        ("two_eos", dict(eos_token_id=[eos, eos2])),
        ("no_eos", dict(eos_token_id=[])),
        ("min_new_tokens_5", dict(min_new_tokens=5)),
        ("beams_3_ngram_3", dict(num_beams=3, num_return_sequences=3, no_repeat_ngram_size=3)),
        ("ngram_1", dict(no_repeat_ngram_size=1)),
        # The prompt ends with a bigram's first token whose second token is the base's first
        # generated one, so no_repeat_ngram_size=2 bans what the model would pick.
        ("ngram_2_repeat", dict(no_repeat_ngram_size=2, prompt="repeat")),
    ]
    many_eos = dict(num_beams=2, num_return_sequences=2, length_penalty=2.0, eos_token_id=many)
    variants += [
        ("many_eos_early_false", dict(many_eos, early_stopping=False)),
        ("many_eos_early_true", dict(many_eos, early_stopping=True)),
        ("many_eos_early_never", dict(many_eos, early_stopping="never")),
    ]
    return [(name, {**base, **v}) for name, v in variants]


def try_settings(name, model, prompt, eos, eos2, many):
    """Every setting's hypotheses, or None at the first near tie or when EOS finishes nothing."""
    records = []
    base_first = None
    for sname, p in settings(eos, eos2, many):
        kw = dict(p)
        kw["eos_token_id"] = kw["eos_token_id"] or None
        run_prompt = prompt
        if kw.pop("prompt", None) == "repeat":
            run_prompt = torch.cat([prompt, torch.tensor([base_first, int(prompt[-1])])])
            p = {k: v for k, v in p.items() if k != "prompt"}
        seqs, gap = beam(model, run_prompt, **kw)
        if sname == "base":
            base_first = seqs[0]["tokens"][0]
        if sname == "ngram_2_repeat":
            # The same without the ban, for the liveness report only (not a test case).
            free = dict(kw, no_repeat_ngram_size=0)
            REPEAT_FREE[name] = beam(model, run_prompt, **free)[0]
        if gap < MIN_MARGIN:
            print(f"{name} prompt {prompt.tolist()} eos {eos}: {sname} near tie ({gap:.1e}), trying another")
            return None
        ends = [s["tokens"][-1] in p["eos_token_id"] for s in seqs]
        print(f"{name:15s} {sname:26s} gap {gap:.4f}  lens {[len(s['tokens']) for s in seqs]}  "
              f"eos {ends}  scores {[round(s['score'], 4) for s in seqs]}")
        records.append({"name": sname, "prompt": run_prompt.tolist(), "params": p, "sequences": seqs,
                        "min_margin": gap})
        # The EOS must finish a kept hypothesis inside the window (finished-hypothesis handling).
        if sname == "base" and not any(len(s["tokens"]) < MAX_NEW and s["tokens"][-1] == eos for s in seqs):
            print(f"{name} prompt {prompt.tolist()} eos {eos}: no hypothesis ends by EOS, trying another")
            return None
    return records


def make_one(name, check):
    d = os.path.join(FIXTURES, name)
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    # The fixtures' generation_config says eos 2; every setting passes its own EOS ids.
    model.generation_config.eos_token_id = None
    ids = load_file(os.path.join(d, "reference.safetensors"))["input_ids"]
    # The first prompt (a slice of the reference input) and EOS id whose every setting is free of
    # near ties; the greedy prompt (offset 0) is tried first.
    for offset in range(0, ids.shape[0] - N_PROMPT + 1):
        prompt = ids[offset : offset + N_PROMPT]
        for eos, eos2, many in eos_choices(model, prompt):
            records = try_settings(name, model, prompt, eos, eos2, many)
            if records is not None:
                break
        if records is not None:
            break
    else:
        raise SystemExit(f"{name}: no prompt/EOS free of near ties")
    out = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": prompt.tolist(),
        "eos": records[0]["params"]["eos_token_id"][0],
        "notes": "sequences: generated ids (final EOS included) and HF sequences_scores, best first; "
        "params use HF generate() names; eos_token_id [] means None",
        "settings": records,
    }
    by_name = {r["name"]: r["sequences"] for r in records}
    live = {
        "ngram_1": by_name["ngram_1"] != by_name["base"],
        "no_repeat_ngram_2": by_name["no_repeat_ngram_2"] != by_name["base"]
        or by_name["ngram_2_repeat"] != REPEAT_FREE[name],
        "early_stopping_true": by_name["many_eos_early_true"] != by_name["many_eos_early_false"]
        or by_name["early_stopping_true"] != by_name["base"],
        "early_stopping_never": by_name["many_eos_early_never"] != by_name["many_eos_early_false"]
        or by_name["early_stopping_never"] != by_name["base"],
        "min_new_tokens_5": by_name["min_new_tokens_5"] != by_name["base"],
    }
    print(f"{name}: settings that change the result: {live}")
    out["live"] = live
    if not check:
        with open(os.path.join(d, "beam.json"), "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    return live


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="run and assert, write nothing")
    ap.add_argument("--only", nargs="*", default=MODELS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    live = [make_one(name, a.check) for name in a.only]
    # Each feature must change the outcome for at least one model, or the tests could not see it
    # broken. ("never" vs False rarely differs on these models: it needs every slot finished
    # while a running beam could still win only at full length; see the unit tests instead.)
    if set(a.only) == set(MODELS):
        for feature in ["ngram_1", "no_repeat_ngram_2", "early_stopping_true", "min_new_tokens_5"]:
            assert any(l[feature] for l in live), f"{feature} changes nothing in any model"


if __name__ == "__main__":
    main()
