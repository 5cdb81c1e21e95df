"""200 concurrent streaming clients, a tenth of which disconnect midway: the server does not
crash, every completed stream is whole (equal to the same request made alone), and afterwards
nothing runs or waits and the KV pool is all free."""

import asyncio
import json
import time

import httpx

N_CLIENTS = 200
PROMPTS = ["alpha", "beta gamma", "delta", "epsilon zeta eta"]
MAX_TOKENS = 24


async def stream_one(client, url, prompt, disconnect):
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "stream": True}
    text, finish, done = [], None, False
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, await r.aread()
        n = 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            text.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0]["finish_reason"] or finish
            n += 1
            if disconnect and n == 3:
                return None  # leaving the block closes the connection midway
    assert done
    return "".join(text), finish


async def run_all(srv, reference):
    limits = httpx.Limits(max_connections=N_CLIENTS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = [stream_one(client, srv.v1 + "/completions", PROMPTS[i % len(PROMPTS)], i % 10 == 0)
                 for i in range(N_CLIENTS)]
        results = await asyncio.gather(*tasks)
    completed = 0
    for i, res in enumerate(results):
        if i % 10 == 0:
            assert res is None
            continue
        text, finish = res
        assert finish == "length"
        assert text == reference[PROMPTS[i % len(PROMPTS)]], f"client {i} got a broken stream"
        completed += 1
    return completed


def test_200_streaming_clients_tenth_disconnect(tiny):
    reference = {}
    for p in PROMPTS:
        r = httpx.post(tiny.v1 + "/completions", json={"prompt": p, "max_tokens": MAX_TOKENS,
                                                       "temperature": 0, "ignore_eos": True}).json()
        reference[p] = r["choices"][0]["text"]
    before = tiny.metrics()
    completed = asyncio.run(run_all(tiny, reference))
    assert completed == N_CLIENTS - N_CLIENTS // 10
    assert tiny.alive()
    # Cancellations are counted when the server notices the closed connection.
    deadline = time.time() + 10
    while time.time() < deadline:
        m = tiny.metrics()
        settled = m["kiln_num_requests_running"] == 0 and m["kiln_num_requests_waiting"] == 0
        if settled and m["kiln_kv_blocks_used"] == 0:
            break
        time.sleep(0.1)
    assert m["kiln_num_requests_running"] == 0
    assert m["kiln_num_requests_waiting"] == 0
    assert m["kiln_kv_blocks_used"] == 0
    assert m["kiln_kv_blocks_free"] == m["kiln_kv_blocks_total"] > 0
    assert m["kiln_kv_slots_used"] == 0
    ok = m['kiln_requests_total{outcome="success"}'] - before['kiln_requests_total{outcome="success"}']
    assert ok >= completed
    assert httpx.get(tiny.url + "/health").status_code == 200
