#!/usr/bin/env python3
"""Golden fixtures for kiln's encoder-only models (BERT, RoBERTa, DistilBERT), made with
Hugging Face transformers.

For each tiny random-weight model below this writes tests/fixtures/<name>/:
  config.json, model.safetensors   as save_pretrained writes them (f32)
  tokenizer.json                   a tiny tokenizer trained on the GPL-3 text (WordPiece for
                                   bert/distilbert, byte-level BPE for roberta), vocab 512
  reference.safetensors            see below
  reference.json                   versions, texts, sequence lengths, label maps, notes, and for
                                   the token-classification fixture transformers' NER pipeline
                                   output with aggregation_strategy="simple"

reference.safetensors (all sequences packed flat, in order, no padding):
  input_ids, token_type_ids   I64 [n_tokens]
  seq_lens                    I64 [n_seqs]
  hidden_states.{i}           F32 [n_tokens, 64]; 0 = embedding output (after its LayerNorm),
                              i = output of layer i (BERT-style post-norm: no final norm)
  pooled_mean, pooled_cls, pooled_max, pooled_mean_normalized   F32 [n_seqs, 64]
                              sentence-transformers' Pooling/Normalize semantics
  bert:    pooler_output F32 [n_seqs, 64], logits F32 [n_seqs, 3], probs F32 [n_seqs, 3]
  roberta: logits F32 [n_tokens, 5], probs F32 [n_tokens, 5]
  roberta_xlm, distilbert_cls: logits F32 [n_seqs, 3], probs F32 [n_seqs, 3]

Fixtures: bert = BertForSequenceClassification (WordPiece, token types, pooler + classifier);
roberta = RobertaForTokenClassification (byte-level BPE, padding-offset positions, a padding id
inside a sequence); distilbert = DistilBertModel (WordPiece); roberta_xlm =
XLMRobertaForSequenceClassification (Unigram, classifier.dense + tanh + out_proj); distilbert_cls
= DistilBertForSequenceClassification (pre_classifier + ReLU + classifier).

Each sequence is run alone (batch of 1, no padding) to make the reference; the script also runs
them as one right-padded batch with an attention mask and asserts the results agree (< 1e-5), so
the reference does not depend on how transformers batches.

Deterministic: fixed seeds, f32, eager attention, one thread. Weights are re-drawn after
construction with a large std (matrices and biases N(0, 0.2), norm weights 1 + N(0, 0.1)).

Run from the repository root:  python tools/make_encoder_fixtures.py [--only NAME ...] [--check]
"""

import argparse
import json
import os
import shutil
import tempfile

# Single-threaded tokenizer training: the Unigram trainer's EM sums in thread order otherwise.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import torch  # noqa: E402
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForTokenClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    pipeline,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
CORPUS = "/usr/share/common-licenses/GPL-3"

VOCAB = 512
HIDDEN = 64
INTERMEDIATE = 128
N_HEADS = 4
N_LAYERS = 2
MAX_POS = 64

TEXTS = [
    "This program is free software: you can redistribute it and/or modify it.",
    "GNU",
    "The Free Software Foundation publishes the General Public License, version 3.",
    "Warranty? None at all!",
]
PAIR = ("Is this program free?", "Yes, it is free software.")

SEQ_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NER_LABELS = {0: "O", 1: "B-ORG", 2: "I-ORG", 3: "B-MISC", 4: "I-MISC"}


def wordpiece_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=special, show_progress=False)
    tok.train([CORPUS], trainer)
    # The trainer numbers its initial alphabet in hash order, which changes from run to run;
    # renumber deterministically (specials first, then by length and text). WordPiece matching
    # is greedy longest-prefix, so ids do not change how text splits.
    rest = sorted((t for t in tok.get_vocab() if t not in special), key=lambda t: (len(t), t))
    vocab = {t: i for i, t in enumerate(special + rest)}
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                     mask_token="[MASK]")


def bpe_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([CORPUS], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok, dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                     pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def unigram_tokenizer():
    """SentencePiece-style Unigram (XLM-R): Metaspace pre-tokenizer, <s> $A </s>. The pieces come
    from the (deterministic) WordPiece vocabulary — word starts get the `▁` prefix, `##` pieces
    lose theirs — with length-based scores, because tokenizers' UnigramTrainer picks different
    pieces from run to run."""
    wp, _ = wordpiece_tokenizer()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    pieces = ["\u2581"]
    for t in sorted(wp.get_vocab(), key=lambda t: (len(t), t)):
        if t.startswith("[") and t.endswith("]"):
            continue
        for p in ([t[2:]] if t.startswith("##") else ["\u2581" + t, t]):
            if p not in pieces:
                pieces.append(p)
    vocab = [(t, 0.0) for t in special] + [(p, -8.0 + 0.5 * len(p)) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=special.index("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    tok.decoder = decoders.Metaspace()
    return tok, dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                     pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def redraw(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                if name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(name):
    """(model, tokenizer, special-token kwargs, input sequences as (ids, type_ids), texts)"""
    if name == "bert":
        tok, sp = wordpiece_tokenizer()
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                         num_attention_heads=N_HEADS, intermediate_size=INTERMEDIATE,
                         max_position_embeddings=MAX_POS, type_vocab_size=2, hidden_act="gelu",
                         layer_norm_eps=1e-12, num_labels=3, id2label=SEQ_LABELS,
                         label2id={v: k for k, v in SEQ_LABELS.items()}, pad_token_id=0)
        model = BertForSequenceClassification(cfg)
        seed = 11
    elif name == "roberta":
        tok, sp = bpe_tokenizer()
        cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                            num_attention_heads=N_HEADS, intermediate_size=INTERMEDIATE,
                            max_position_embeddings=MAX_POS + 2, type_vocab_size=1,
                            hidden_act="gelu", layer_norm_eps=1e-5, num_labels=5,
                            id2label=NER_LABELS, label2id={v: k for k, v in NER_LABELS.items()},
                            pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = RobertaForTokenClassification(cfg)
        seed = 12
    elif name == "roberta_xlm":
        tok, sp = unigram_tokenizer()
        cfg = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                               num_attention_heads=N_HEADS, intermediate_size=INTERMEDIATE,
                               max_position_embeddings=MAX_POS + 2, type_vocab_size=1,
                               hidden_act="gelu", layer_norm_eps=1e-5, num_labels=3,
                               id2label=SEQ_LABELS, label2id={v: k for k, v in SEQ_LABELS.items()},
                               pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = XLMRobertaForSequenceClassification(cfg)
        seed = 14
    elif name == "distilbert_cls":
        tok, sp = wordpiece_tokenizer()
        cfg = DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=N_LAYERS, n_heads=N_HEADS,
                               hidden_dim=INTERMEDIATE, max_position_embeddings=MAX_POS,
                               activation="gelu", pad_token_id=0, num_labels=3,
                               id2label=SEQ_LABELS, label2id={v: k for k, v in SEQ_LABELS.items()})
        model = DistilBertForSequenceClassification(cfg)
        seed = 15
    elif name == "distilbert":
        tok, sp = wordpiece_tokenizer()
        cfg = DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=N_LAYERS, n_heads=N_HEADS,
                               hidden_dim=INTERMEDIATE, max_position_embeddings=MAX_POS,
                               activation="gelu", pad_token_id=0)
        model = DistilBertModel(cfg)
        model.config.architectures = ["DistilBertModel"]
        seed = 13
    else:
        raise ValueError(name)
    model.config._attn_implementation = "eager"
    redraw(model, seed)
    model.eval()
    seqs = []
    for t in TEXTS:
        e = tok.encode(t)
        seqs.append((e.ids, e.type_ids))
    if name == "bert":
        e = tok.encode(*PAIR)
        seqs.append((e.ids, e.type_ids))
        assert 1 in e.type_ids
    if name == "roberta":
        # The padding id inside a sequence: RoBERTa numbers positions by counting non-padding
        # tokens (create_position_ids_from_input_ids), so this token gets position padding_idx.
        seqs.append(([0, 45, 1, 77, 300, 2], [0] * 6))
    return model, tok, sp, seqs, seed


def run(model, ids, type_ids, mask=None):
    kw = dict(input_ids=ids, output_hidden_states=True)
    if mask is not None:
        kw["attention_mask"] = mask
    if model.config.model_type != "distilbert":
        kw["token_type_ids"] = type_ids
    with torch.no_grad():
        return model(**kw)


def pool(h):
    """sentence-transformers Pooling over one unpadded sequence h (len, hidden)."""
    mean = h.sum(0) / max(h.shape[0], 1e-9)
    return dict(pooled_mean=mean, pooled_cls=h[0], pooled_max=h.max(0).values,
                pooled_mean_normalized=torch.nn.functional.normalize(mean, p=2, dim=0))


def make_one(name, check):
    torch.manual_seed(0)
    model, tok, sp, seqs, seed = build(name)
    base = getattr(model, model.base_model_prefix, model)
    per_seq = []
    for ids, tt in seqs:
        out = run(model, torch.tensor([ids]), torch.tensor([tt]))
        per_seq.append(out)
    n_hidden = len(per_seq[0].hidden_states)
    assert n_hidden == N_LAYERS + 1

    # The same sequences as one right-padded batch must agree with the one-by-one runs.
    L = max(len(i) for i, _ in seqs)
    pad = model.config.pad_token_id
    ids_b = torch.full((len(seqs), L), pad, dtype=torch.int64)
    tt_b = torch.zeros((len(seqs), L), dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.int64)
    for b, (ids, tt) in enumerate(seqs):
        ids_b[b, :len(ids)] = torch.tensor(ids)
        tt_b[b, :len(ids)] = torch.tensor(tt)
        mask[b, :len(ids)] = 1
    batched = run(model, ids_b, tt_b, mask)
    for b, (ids, _) in enumerate(seqs):
        d = (batched.hidden_states[-1][b, :len(ids)] - per_seq[b].hidden_states[-1][0]).abs().max()
        assert d < 1e-5, f"{name}: padded batch differs from single runs by {d}"

    t = {
        "input_ids": torch.tensor([i for ids, _ in seqs for i in ids]),
        "token_type_ids": torch.tensor([i for _, tt in seqs for i in tt]),
        "seq_lens": torch.tensor([len(ids) for ids, _ in seqs]),
    }
    for i in range(n_hidden):
        t[f"hidden_states.{i}"] = torch.cat([o.hidden_states[i][0] for o in per_seq])
    pooled = [pool(o.hidden_states[-1][0]) for o in per_seq]
    for k in pooled[0]:
        t[k] = torch.stack([p[k] for p in pooled])
    extra = {}
    if name in ("roberta_xlm", "distilbert_cls"):
        t["logits"] = torch.cat([o.logits for o in per_seq])
        t["probs"] = t["logits"].softmax(-1)
        extra["id2label"] = {str(k): v for k, v in SEQ_LABELS.items()}
        extra["predicted"] = [SEQ_LABELS[int(i)] for i in t["logits"].argmax(-1)]
    if name == "bert":
        t["pooler_output"] = torch.cat([base.pooler(o.hidden_states[-1]) for o in per_seq])
        t["logits"] = torch.cat([o.logits for o in per_seq])
        t["probs"] = t["logits"].softmax(-1)
        extra["id2label"] = {str(k): v for k, v in SEQ_LABELS.items()}
        extra["predicted"] = [SEQ_LABELS[int(i)] for i in t["logits"].argmax(-1)]
    if name == "roberta":
        t["logits"] = torch.cat([o.logits[0] for o in per_seq])
        t["probs"] = t["logits"].softmax(-1)
        extra["id2label"] = {str(k): v for k, v in NER_LABELS.items()}
        # positions: padding_idx + number of non-padding tokens so far (padding_idx for padding)
        last = seqs[-1][0]
        pos = base.embeddings.create_position_ids_from_input_ids(torch.tensor([last]), pad)
        extra["position_ids_of_last_sequence"] = pos[0].tolist()
    t = {k: v.contiguous() for k, v in t.items()}

    if check:
        print(name, "ok", {k: v for k, v in extra.items() if k == "predicted"})
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
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(dict(sp, model_max_length=MAX_POS, tokenizer_class="PreTrainedTokenizerFast"), f,
                  indent=2)
        f.write("\n")
    save_file(t, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})

    # reloaded weights reproduce the reference
    reloaded = type(model).from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    o = run(reloaded, torch.tensor([seqs[0][0]]), torch.tensor([seqs[0][1]]))
    assert torch.equal(o.hidden_states[-1], per_seq[0].hidden_states[-1])

    if name == "roberta":
        hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), **sp)
        ner = pipeline("token-classification", model=reloaded, tokenizer=hf_tok,
                       aggregation_strategy="simple", device="cpu")
        extra["ner_simple"] = [[{k: (float(v) if k == "score" else v) for k, v in e.items()}
                                for e in ner(text)] for text in TEXTS]
    ref = {
        "architecture": model.config.architectures[0] if model.config.architectures
        else type(model).__name__,
        "model_type": model.config.model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "n_layers": N_LAYERS,
        "seed": seed,
        "texts": TEXTS + ([list(PAIR)] if name == "bert" else []),
        "seq_lens": t["seq_lens"].tolist(),
        "hidden_states": "hidden_states.0 is the embedding output (after the embedding LayerNorm); "
                         "hidden_states.i is the output of layer i; BERT-style blocks are post-norm, "
                         "so the last entry is the model's output (no final norm).",
        "pooling": "sentence-transformers: mean = sum/len, cls = first token, max = per-dim max, "
                   "over each unpadded sequence; pooled_mean_normalized = L2-normalized mean",
        "init": "matrices and biases N(0, 0.2), LayerNorm weights 1 + N(0, 0.1); f32; eager",
        **extra,
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(name, "written", {k: v for k, v in extra.items() if k in ("predicted", "ner_simple")})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name in a.only or ["bert", "roberta", "distilbert", "roberta_xlm", "distilbert_cls"]:
        make_one(name, a.check)


if __name__ == "__main__":
    main()
