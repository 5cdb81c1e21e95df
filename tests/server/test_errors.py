"""Every error case over real HTTP: OpenAI-shaped bodies with the right status, 429 with
Retry-After when the queue is full, 413 for big bodies, and SIGTERM draining (503 for new
requests, the running one finishes whole, exit code 0)."""

import concurrent.futures as cf
import json
import signal
import time

import httpx
import pytest

from conftest import SMOL, TINY


def check_error(r: httpx.Response, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"]
    assert isinstance(e["type"], str)
    assert "param" in e and "code" in e
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


@pytest.mark.parametrize("body,param", [
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "a", "temperature": 2.5}, "temperature"),
    ({"prompt": "a", "top_p": 1.5}, "top_p"),
    ({"prompt": "a", "top_k": -2}, "top_k"),
    ({"prompt": "a", "min_p": -0.1}, "min_p"),
    ({"prompt": "a", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "a", "frequency_penalty": -3}, "frequency_penalty"),
    ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 10 ** 12}, "n"),
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"prompt": "a", "stop": ""}, "stop"),
    ({"prompt": "a", "stop": ["x"] * 17}, "stop"),
    ({"prompt": [999999]}, "prompt"),
])
def test_invalid_parameters_are_400(tiny, body, param):
    r = httpx.post(tiny.v1 + "/completions", json=body)
    check_error(r, 400, param=param)


@pytest.mark.parametrize("raw", ["{", "not json", "[1,2]", '{"prompt": 3}', '{"prompt": "a", "seed": "x"}',
                                 '{"prompt": "a", "max_tokens": 1e400}', '{"prompt": "a", "n": 18446744073709551616}'])
def test_malformed_json_is_400(tiny, raw):
    r = httpx.post(tiny.v1 + "/completions", content=raw, headers={"content-type": "application/json"})
    check_error(r, 400)


def test_chat_errors(tiny):
    check_error(httpx.post(tiny.v1 + "/chat/completions", json={"messages": []}), 400, param="messages")
    check_error(httpx.post(tiny.v1 + "/chat/completions",
                           json={"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400)
    check_error(httpx.post(tiny.v1 + "/chat/completions",
                           json={"messages": [{"role": "user", "content": "a"}], "top_logprobs": 3}), 400,
                param="top_logprobs")
    check_error(httpx.post(tiny.v1 + "/chat/completions",
                           json={"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}),
                400, param="max_completion_tokens")


def test_context_length_is_400(tiny):
    check_error(httpx.post(tiny.v1 + "/completions", json={"prompt": "z" * 300}), 400,
                code="context_length_exceeded")
    check_error(httpx.post(tiny.v1 + "/completions", json={"prompt": "z", "max_tokens": 1000}), 400,
                code="context_length_exceeded")
    check_error(httpx.post(tiny.v1 + "/chat/completions",
                           json={"messages": [{"role": "user", "content": "z" * 300}]}), 400,
                code="context_length_exceeded")


def test_unknown_model_is_404(tiny):
    check_error(httpx.post(tiny.v1 + "/completions", json={"model": "nope", "prompt": "a"}), 404,
                param="model", code="model_not_found")
    check_error(httpx.post(tiny.v1 + "/chat/completions",
                           json={"model": "nope", "messages": [{"role": "user", "content": "a"}]}), 404)


def test_unknown_route_and_method(tiny):
    check_error(httpx.get(tiny.url + "/v2/whatever"), 404)
    check_error(httpx.get(tiny.v1 + "/completions"), 405)


def test_embeddings_on_a_generator_is_400(tiny):
    check_error(httpx.post(tiny.v1 + "/embeddings", json={"input": "a"}), 400)


def test_body_too_large_is_413(tiny):
    r = httpx.post(tiny.v1 + "/completions", content=b'{"prompt": "' + b"a" * (5 << 20) + b'"}',
                   headers={"content-type": "application/json"})
    check_error(r, 413)
    assert tiny.alive()


def test_full_queue_is_429_with_retry_after(make_server):
    srv = make_server(TINY, "tiny", "--max-num-seqs", "1", "--max-waiting", "1")
    body = {"prompt": "q", "max_tokens": 100, "temperature": 0, "ignore_eos": True}

    def one(_):
        return httpx.post(srv.v1 + "/completions", json=body, timeout=120)

    with cf.ThreadPoolExecutor(32) as pool:
        rs = list(pool.map(one, range(32)))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes, codes
    for r in rs:
        if r.status_code == 429:
            check_error(r, 429)
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.json()["usage"]["completion_tokens"] == 100
    m = srv.metrics()
    assert m['kiln_requests_total{outcome="rejected"}'] == codes.count(429)
    assert m['kiln_requests_total{outcome="success"}'] == codes.count(200)


def test_sigterm_drains_then_exits_0(make_server):
    srv = make_server(SMOL, "smollm2")
    # Long enough (~2 s at 6 ms a token) to still be running when the checks below are made.
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
            "stream": True}
    texts, finish = [], []
    with httpx.stream("POST", srv.v1 + "/completions", json=body, timeout=300) as r:
        lines = r.iter_lines()
        sent = False
        for line in lines:
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            texts.append(chunk["choices"][0]["text"])
            if chunk["choices"][0]["finish_reason"]:
                finish.append(chunk["choices"][0]["finish_reason"])
            if not sent:
                srv.proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                check_error(httpx.post(srv.v1 + "/completions", json={"prompt": "late"}, timeout=30), 503)
                assert httpx.get(srv.url + "/health", timeout=30).status_code == 503
                sent = True
    assert finish == ["length"], "the running request finished whole"
    assert srv.proc.wait(timeout=120) == 0


def test_disconnect_cancels_at_once(make_server):
    srv = make_server(SMOL, "smollm2")
    body = {"prompt": "Write a long story.", "max_tokens": 2000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", srv.v1 + "/completions", json=body, timeout=300) as r:
        n = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                n += 1
            if n == 3:
                break
    t0 = time.time()
    while time.time() - t0 < 5:
        m = srv.metrics()
        if m.get('kiln_requests_total{outcome="cancelled"}') == 1 and m["kiln_num_requests_running"] == 0:
            break
        time.sleep(0.05)
    assert m['kiln_requests_total{outcome="cancelled"}'] == 1
    assert m["kiln_num_requests_running"] == 0
    assert m["kiln_kv_blocks_used"] == 0
    # 2000 tokens (~12 s at 6 ms a token) take longer than the 5 s waited: it stopped early.
    assert m["kiln_generation_tokens_total"] == 0
    assert httpx.get(srv.url + "/health").status_code == 200
