//! The HTTP layer against the tiny random-weight llama fixture (tests/fixtures/server_llama:
//! vocab 259 byte-level tokens, context 128), driven in-process with tower's `oneshot`: the one
//! error mapping (status, type, param, code, Retry-After), SSE framing, and outputs equal to the
//! single-request reference `Engine::generate`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use kiln_engine::{Engine, SamplingParams};
use kiln_server::engine::{EngineConfig, EngineHandle};
use kiln_server::{AppState, ServedModel, ServerConfig};
use kiln_tokenizer::ChatTemplate;
use serde_json::{json, Value};
use tower::ServiceExt;

const MODEL: &str = "tiny";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/server_llama")
}

fn engine() -> Arc<Engine> {
    engine_of(&fixture())
}

fn engine_of(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::load(dir, &mut |_, _| {}).expect("the server fixture loads"))
}

fn state_with(
    max_num_seqs: usize,
    max_waiting: usize,
    max_body_bytes: usize,
) -> (Arc<AppState>, Arc<Engine>) {
    state_of(engine(), max_num_seqs, max_waiting, max_body_bytes)
}

fn state_of(
    engine: Arc<Engine>,
    max_num_seqs: usize,
    max_waiting: usize,
    max_body_bytes: usize,
) -> (Arc<AppState>, Arc<Engine>) {
    let chat = ChatTemplate::from_tokenizer(&engine.tokenizer)
        .ok()
        .map(Box::new);
    let handle = EngineHandle::start(
        engine.clone(),
        EngineConfig {
            max_num_seqs,
            max_num_batched_tokens: 512.max(max_num_seqs),
            max_waiting,
            ..EngineConfig::default()
        },
    )
    .expect("engine thread starts");
    let mut config = ServerConfig::new(MODEL);
    config.max_body_bytes = max_body_bytes;
    // Small, so the default-bound test below runs fast; the route's own default is tested
    // through ServerConfig::new.
    config.default_max_tokens = DEFAULT_MAX_TOKENS_UNDER_TEST;
    let state = AppState::new(
        config,
        ServedModel::Generator {
            engine: engine.clone(),
            handle,
            chat,
        },
    );
    (state, engine)
}

fn app() -> (Router, Arc<AppState>, Arc<Engine>) {
    let (state, engine) = state_with(8, 64, 1 << 20);
    (kiln_server::router(state.clone()), state, engine)
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or("").to_string()))
        .expect("a valid request");
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("the router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body reads");
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
    )
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = send(app, "POST", path, Some(&body.to_string())).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// `/metrics` once the engine has published the step after the last request finished (its
/// gauges are a snapshot taken at the end of each step, after the events were sent).
async fn settled_metrics(app: &Router) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, _, m) = send(app, "GET", "/metrics", None).await;
        if m.contains("kiln_num_requests_running 0\n") || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Asserts the OpenAI error shape and returns the error object.
fn error_of(status: StatusCode, want: StatusCode, body: &Value) -> Value {
    assert_eq!(status, want, "body: {body}");
    let e = body["error"].clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e
}

#[tokio::test]
async fn completion_equals_reference_generate() {
    let (app, _, engine) = app();
    let prompt = "Hello there";
    let ids = engine.encode_prompt(prompt, false).expect("encodes");
    let params = SamplingParams {
        max_tokens: 12,
        ..SamplingParams::greedy()
    };
    let want = engine
        .generate(&ids, &params, &mut |_| {})
        .expect("generates");
    let (s, v) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.text.as_str());
    assert_eq!(
        v["choices"][0]["finish_reason"],
        want.finish_reason.as_str()
    );
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["usage"]["completion_tokens"], want.token_ids.len());
    assert_eq!(v["usage"]["total_tokens"], ids.len() + want.token_ids.len());
}

#[tokio::test]
async fn seeded_sampling_reproduces_and_n_differs() {
    let (app, _, _) = app();
    let body = json!({"prompt": "abc", "max_tokens": 10, "temperature": 1.0, "seed": 7, "n": 2});
    let (_, a) = post(&app, "/v1/completions", body.clone()).await;
    let (_, b) = post(&app, "/v1/completions", body).await;
    assert_eq!(a["choices"], b["choices"], "same seed, same output");
    assert_eq!(a["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(a["choices"][1]["index"], 1);
}

#[tokio::test]
async fn streaming_is_framed_as_sse_and_matches_non_streaming() {
    let (app, _, _) = app();
    let req = json!({"prompt": "stream me", "max_tokens": 10, "temperature": 0});
    let (_, whole) = post(&app, "/v1/completions", req.clone()).await;
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (s, headers, body) = send(&app, "POST", "/v1/completions", Some(&sreq.to_string())).await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/event-stream")));
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let data = e
            .strip_prefix("data: ")
            .expect("every event is one data line");
        assert!(!data.contains('\n'));
        let v: Value = serde_json::from_str(data).expect("each chunk is JSON");
        assert_eq!(v["object"], "text_completion");
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            text.push_str(c["text"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish = Some(c["finish_reason"].clone());
            }
        } else {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap_or("?"));
    assert_eq!(finish, Some(whole["choices"][0]["finish_reason"].clone()));
    assert_eq!(usage, Some(whole["usage"].clone()));
}

#[tokio::test]
async fn chat_completion_and_stream_shapes() {
    let (app, _, engine) = app();
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let (s, v) = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": messages, "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0)
    );
    for t in &content {
        let top = t["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 2);
        // Greedy: the sampled token is the most likely one.
        assert_eq!(t["logprob"], top[0]["logprob"]);
        assert!(t["logprob"].as_f64().is_some_and(|l| l <= 0.0));
    }
    // The rendered prompt is what the template gives (usage counts it).
    let tmpl = ChatTemplate::from_tokenizer(&engine.tokenizer).expect("fixture has a template");
    let text = tmpl
        .render(
            &[
                kiln_tokenizer::ChatMessage::new("system", "be brief"),
                kiln_tokenizer::ChatMessage::new("user", "hi"),
            ],
            true,
        )
        .expect("renders");
    let ids = engine.tokenizer.encode(&text, false).expect("encodes");
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());

    let (_, _, body) = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(
            &json!({"messages": messages, "max_tokens": 8, "temperature": 0, "stream": true})
                .to_string(),
        ),
    )
    .await;
    let chunks: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );
    let last = chunks.last().expect("chunks");
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(
        last["choices"][0]["finish_reason"],
        v["choices"][0]["finish_reason"]
    );
}

#[tokio::test]
async fn stop_string_truncates_output() {
    let (app, _, _) = app();
    let (_, full) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "xyz", "max_tokens": 20, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let text = full["choices"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // A stop string taken from the middle of the greedy output.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 6 {
        return; // the fixture ended early: nothing to cut
    }
    let stop: String = chars[3..5].iter().collect();
    let (_, cut) = post(&app, "/v1/completions", json!({"prompt": "xyz", "max_tokens": 20, "temperature": 0, "ignore_eos": true, "stop": [stop]})).await;
    let want = &text[..text.find(&stop).expect("stop is in the text")];
    assert_eq!(cut["choices"][0]["text"], want);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn invalid_requests_are_400_with_the_param_named() {
    let (app, _, _) = app();
    let cases = [
        (json!({"prompt": "a", "temperature": 3.0}), "temperature"),
        (json!({"prompt": "a", "top_p": 0}), "top_p"),
        (json!({"prompt": "a", "top_k": -5}), "top_k"),
        (json!({"prompt": "a", "min_p": 1.5}), "min_p"),
        (
            json!({"prompt": "a", "presence_penalty": 9}),
            "presence_penalty",
        ),
        (
            json!({"prompt": "a", "frequency_penalty": -9}),
            "frequency_penalty",
        ),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (json!({"prompt": "a", "n": 100000}), "n"),
        (json!({"prompt": "a", "logprobs": 50}), "logprobs"),
        (json!({"prompt": "a", "stop": [""]}), "stop"),
        (
            json!({"prompt": "a", "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"prompt": [100000]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
    ];
    for (body, param) in cases {
        let (s, v) = post(&app, "/v1/completions", body.clone()).await;
        let e = error_of(s, StatusCode::BAD_REQUEST, &v);
        assert_eq!(e["type"], "invalid_request_error", "{body}");
        assert_eq!(e["param"], param, "{body}: {v}");
    }
    let (s, v) = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}),
    )
    .await;
    assert_eq!(
        error_of(s, StatusCode::BAD_REQUEST, &v)["param"],
        "top_logprobs"
    );
    let (s, v) = post(&app, "/v1/chat/completions", json!({"messages": []})).await;
    error_of(s, StatusCode::BAD_REQUEST, &v);
    let (s, v) = post(&app, "/v1/embeddings", json!({"input": "a"})).await;
    error_of(s, StatusCode::BAD_REQUEST, &v);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400() {
    let (app, _, _) = app();
    for body in [
        "{",
        "[]",
        "null",
        "{\"prompt\": 5}",
        "{\"prompt\": \"a\", \"max_tokens\": \"ten\"}",
        "{\"prompt\": \"a\", \"temperature\": 1e999}",
        "{\"prompt\": \"a\", \"seed\": 1.5}",
        "",
    ] {
        let (s, _, b) = send(&app, "POST", "/v1/completions", Some(body)).await;
        let v: Value = serde_json::from_str(&b).expect("error body is JSON");
        assert_eq!(
            error_of(s, StatusCode::BAD_REQUEST, &v)["type"],
            "invalid_request_error",
            "{body}"
        );
    }
}

#[tokio::test]
async fn prompt_longer_than_context_is_400_context_length() {
    let (app, _, _) = app();
    let long = "x".repeat(200); // byte-level: 201 tokens with BOS > 128
    let (s, v) = post(&app, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(
        error_of(s, StatusCode::BAD_REQUEST, &v)["code"],
        "context_length_exceeded"
    );
    let (s, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 500}),
    )
    .await;
    assert_eq!(
        error_of(s, StatusCode::BAD_REQUEST, &v)["code"],
        "context_length_exceeded"
    );
}

#[tokio::test]
async fn unknown_model_route_and_method() {
    let (app, _, _) = app();
    let (s, v) = post(
        &app,
        "/v1/completions",
        json!({"model": "gpt-9", "prompt": "a"}),
    )
    .await;
    assert_eq!(
        error_of(s, StatusCode::NOT_FOUND, &v)["code"],
        "model_not_found"
    );
    let (s, _, b) = send(&app, "GET", "/v1/nothing", None).await;
    error_of(
        s,
        StatusCode::NOT_FOUND,
        &serde_json::from_str(&b).expect("JSON"),
    );
    let (s, _, b) = send(&app, "GET", "/v1/completions", None).await;
    error_of(
        s,
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::from_str(&b).expect("JSON"),
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let (state, _) = state_with(8, 64, 1024);
    let app = kiln_server::router(state);
    let big = json!({"prompt": "a".repeat(4096)}).to_string();
    let (s, _, b) = send(&app, "POST", "/v1/completions", Some(&big)).await;
    error_of(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        &serde_json::from_str(&b).expect("JSON"),
    );
}

#[tokio::test]
async fn full_queue_is_429_with_retry_after() {
    // One running sequence, one waiting: of requests sent faster than the first can finish,
    // some must be refused.
    let (state, _) = state_with(1, 1, 1 << 20);
    let app = kiln_server::router(state.clone());
    let body =
        json!({"prompt": "a", "max_tokens": 120, "ignore_eos": true, "stream": true}).to_string();
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..8 {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/completions")
            .body(Body::from(body.clone()))
            .expect("a valid request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().contains_key(header::RETRY_AFTER));
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body");
            let v: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(
                error_of(
                    StatusCode::TOO_MANY_REQUESTS,
                    StatusCode::TOO_MANY_REQUESTS,
                    &v
                )["type"],
                "rate_limit_error"
            );
            refused += 1;
        } else {
            assert_eq!(resp.status(), StatusCode::OK);
            held.push(resp); // keep the stream open so its request keeps its slot
        }
    }
    assert!(refused >= 1, "no request was refused");
    assert!(!held.is_empty());
    let (_, _, m) = send(&app, "GET", "/metrics", None).await;
    assert!(
        m.contains(&format!(
            "kiln_requests_total{{outcome=\"rejected\"}} {refused}"
        )),
        "{m}"
    );
}

#[tokio::test]
async fn shutting_down_is_503_but_metrics_still_scrape() {
    let (app, state, _) = app();
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.drain())
        .await
        .expect("drains");
    let (s, h, b) = send(
        &app,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": "a"}).to_string()),
    )
    .await;
    error_of(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::from_str(&b).expect("JSON"),
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    let (s, _, _) = send(&app, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, _) = send(&app, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_and_tokens() {
    let (app, _, _) = app();
    let (_, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "count me", "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let (s, h, _) = send(&app, "GET", "/metrics", None).await;
    let m = settled_metrics(&app).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/plain")));
    assert!(
        m.contains("kiln_requests_total{outcome=\"success\"} 1"),
        "{m}"
    );
    assert!(m.contains("kiln_generation_tokens_total 5"), "{m}");
    assert!(
        m.contains("kiln_time_to_first_token_seconds_count 1"),
        "{m}"
    );
    assert!(
        m.contains("kiln_inter_token_latency_seconds_count 4"),
        "{m}"
    );
    assert!(m.contains("kiln_num_requests_running 0"), "{m}");
    assert!(m.contains("kiln_kv_blocks_used 0"), "{m}");
}

/// A mixture-of-experts model (tests/fixtures/mixtral) exports its routing counters: every token
/// the engine ran passed through each sparse layer and picked top_k experts there.
#[tokio::test]
async fn metrics_export_moe_expert_tokens() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mixtral");
    let (state, _) = state_of(engine_of(&dir), 8, 64, 1 << 20);
    let app = kiln_server::router(state);
    let (s, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "The kiln was", "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let run = v["usage"]["prompt_tokens"].as_u64().unwrap() + 5 - 1;
    let m = settled_metrics(&app).await;
    assert!(
        m.contains("# TYPE kiln_moe_expert_tokens_total counter"),
        "{m}"
    );
    for layer in 0..2 {
        let sum: u64 = (0..4)
            .map(|e| {
                let key =
                    format!("kiln_moe_expert_tokens_total{{layer=\"{layer}\",expert=\"{e}\"}} ");
                let line = m
                    .lines()
                    .find(|l| l.starts_with(&key))
                    .unwrap_or_else(|| panic!("{key}: {m}"));
                line[key.len()..].parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(
            sum,
            2 * run,
            "layer {layer}: top-2 picks of {run} tokens: {m}"
        );
    }
    assert!(m.contains("kiln_moe_aux_loss "), "{m}");
}

const DEFAULT_MAX_TOKENS_UNDER_TEST: usize = 7;

/// A field kiln does not implement is a 400 naming it, on both generation endpoints, never
/// silently dropped; `user` (an identifier OpenAI only logs) is accepted.
#[tokio::test]
async fn unknown_parameters_are_refused_by_name() {
    let (app, _, _) = app();
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 2, "logit_bias": {"1": 5}}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 2, "suffix": "x"}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": []}),
        ),
    ] {
        let field = body
            .as_object()
            .unwrap()
            .keys()
            .find(|k| !["prompt", "max_tokens", "messages"].contains(&k.as_str()))
            .unwrap()
            .clone();
        let (s, v) = post(&app, path, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {field}: {v}");
        assert_eq!(v["error"]["param"], field.as_str(), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(&field),
            "{v}"
        );
    }
    let (s, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 2, "user": "someone"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The OpenAPI document says the same.
    let (_, _, doc) = send(&app, "GET", "/openapi.json", None).await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for schema in ["CompletionRequest", "ChatCompletionRequest"] {
        assert_eq!(
            doc["components"]["schemas"][schema]["additionalProperties"],
            false
        );
    }
}

/// A chat request without `max_tokens` ends at `--default-max-tokens`, not the context.
#[tokio::test]
async fn chat_without_max_tokens_ends_within_the_default() {
    let (app, _, _) = app();
    let (s, v) = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "go on"}], "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["usage"]["completion_tokens"], DEFAULT_MAX_TOKENS_UNDER_TEST,
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        ServerConfig::new("m").default_max_tokens,
        kiln_server::DEFAULT_CHAT_MAX_TOKENS
    );
}

#[tokio::test]
async fn tokenize_detokenize_models_health() {
    let (app, _, _) = app();
    let (s, v) = post(&app, "/tokenize", json!({"prompt": "héllo"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 6); // <s> h é(2 bytes, no merge) llo
    assert_eq!(v["max_model_len"], 128);
    let mut ids = v["tokens"].clone();
    ids.as_array_mut().map(|a| a.remove(0));
    let (_, d) = post(&app, "/detokenize", json!({"tokens": ids})).await;
    assert_eq!(d["prompt"], "héllo");
    let (s, d) = post(&app, "/detokenize", json!({"tokens": [-1]})).await;
    error_of(s, StatusCode::BAD_REQUEST, &d);
    let (_, _, b) = send(&app, "GET", "/v1/models", None).await;
    let m: Value = serde_json::from_str(&b).expect("JSON");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    let (s, _, _) = send(&app, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let (app, _, _) = app();
    let (s, _, b) = send(&app, "GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_str(&b).expect("JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    for (method, path) in kiln_server::openapi::ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
        let (s, _, _) = send(&app, &method.to_uppercase(), path, Some("{}")).await;
        assert_ne!(s, StatusCode::NOT_FOUND, "{method} {path} not routed");
        assert_ne!(
            s,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} not routed"
        );
    }
    assert_eq!(
        doc["paths"].as_object().map(|p| p.len()),
        Some(kiln_server::openapi::ROUTES.len())
    );
}

#[tokio::test]
async fn prefix_cache_hits_show_in_metrics() {
    let (app, _, _) = app();
    // Byte-level fixture: 60 bytes of x are 61 tokens with BOS, several full 16-token blocks.
    let body = json!({"prompt": "x".repeat(60), "max_tokens": 2, "temperature": 0});
    for _ in 0..2 {
        let (s, v) = post(&app, "/v1/completions", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let m = settled_metrics(&app).await;
    let rate: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("kiln_prefix_cache_hit_rate "))
        .and_then(|v| v.parse().ok())
        .expect("the hit-rate gauge");
    assert!(rate > 0.0, "{m}");
    assert!(m.contains("kiln_kv_blocks_used 0"), "{m}");
}
