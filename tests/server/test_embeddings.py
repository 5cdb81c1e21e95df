"""`/v1/embeddings` on all-MiniLM-L6-v2 against sentence-transformers' embeddings recorded in
tests/fixtures/minilm (read here with a few lines of safetensors parsing, so the suite needs
neither numpy nor safetensors)."""

import base64
import json
import math
import struct

import httpx
import openai

from conftest import ROOT

REF = ROOT / "tests" / "fixtures" / "minilm"


def reference():
    meta = json.loads((REF / "reference.json").read_text())
    raw = (REF / "reference.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    t = header["embeddings"]
    assert t["dtype"] == "F32"
    rows, dim = t["shape"]
    start, end = t["data_offsets"]
    flat = struct.unpack(f"<{rows * dim}f", raw[8 + n + start:8 + n + end])
    return meta["sentences"], [flat[i * dim:(i + 1) * dim] for i in range(rows)]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_match_sentence_transformers(minilm):
    sentences, want = reference()
    # The last reference sentence is longer than the model's limit (sentence-transformers
    # truncates it; the API refuses it, as OpenAI does) and the API refuses empty inputs, so
    # those are left out here.
    keep = [i for i, s in enumerate(sentences[:-1]) if s]
    sentences, want = [sentences[i] for i in keep], [want[i] for i in keep]
    c = openai.OpenAI(base_url=minilm.v1, api_key="unused", max_retries=0)
    r = c.embeddings.create(model="minilm", input=sentences, encoding_format="float")
    assert [d.index for d in r.data] == list(range(len(sentences)))
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    for d, w in zip(r.data, want):
        assert len(d.embedding) == 384
        assert cosine(d.embedding, w) > 0.9999
        assert max(abs(x - y) for x, y in zip(d.embedding, w)) < 1e-4
    # The openai client asks for base64 by default and decodes it.
    r64 = c.embeddings.create(model="minilm", input=sentences[0])
    assert max(abs(x - y) for x, y in zip(r64.data[0].embedding, r.data[0].embedding)) == 0.0


def test_embeddings_base64_bytes(minilm):
    r = httpx.post(minilm.v1 + "/embeddings", json={"input": "Hello world", "encoding_format": "base64"}).json()
    raw = base64.b64decode(r["data"][0]["embedding"])
    vec = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vec) == 384
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-4  # Normalize module


def test_embedding_errors(minilm):
    for body in [{"input": []}, {"input": ""}, {"input": "a", "encoding_format": "int8"},
                 {"input": "a", "dimensions": 12}, {"input": [1, 2, 3]}, {"input": "x " * 2000}]:
        r = httpx.post(minilm.v1 + "/embeddings", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(minilm.v1 + "/completions", json={"prompt": "a"})
    assert r.status_code == 400
    assert httpx.post(minilm.v1 + "/embeddings", json={"input": "a", "model": "x"}).status_code == 404
