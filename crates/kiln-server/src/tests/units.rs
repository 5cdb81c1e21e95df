use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::engine::SubmitError;
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome, RequestTracker};
use crate::params::{max_tokens, sampling, seed_for_choice, top_logprobs};
use crate::protocol::{SamplingFields, StopInput};

#[test]
fn max_tokens_defaults_clamp_and_context_error() {
    assert_eq!(max_tokens(None, "max_tokens", 10, 128, 16).ok(), Some(16));
    // The default never exceeds the room left in the context.
    assert_eq!(max_tokens(None, "max_tokens", 120, 128, 16).ok(), Some(8));
    assert_eq!(
        max_tokens(Some(118), "max_tokens", 10, 128, 16).ok(),
        Some(118)
    );
    assert!(matches!(
        max_tokens(Some(119), "max_tokens", 10, 128, 16),
        Err(ApiError::ContextLength(_))
    ));
    let e = max_tokens(Some(0), "max_completion_tokens", 10, 128, 16).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        e.body().error.param.as_deref(),
        Some("max_completion_tokens")
    );
}

#[test]
fn sampling_fields_map_to_engine_params() {
    let f = SamplingFields {
        temperature: Some(0.5),
        top_k: Some(-1),
        stop: Some(StopInput::One("END".into())),
        seed: Some(-1),
        n: Some(3),
        ..Default::default()
    };
    let s = sampling(&f, 2).expect("valid");
    assert_eq!(s.params.temperature, 0.5);
    assert_eq!(s.params.top_k, 0);
    assert_eq!(s.params.stop, vec!["END".to_string()]);
    assert_eq!(s.params.seed, Some(u64::MAX));
    assert_eq!(s.n, 3);
    assert!(!s.stream && !s.include_usage);
    // n times prompts is capped.
    let f = SamplingFields {
        n: Some(40),
        ..Default::default()
    };
    assert!(sampling(&f, 2).is_err());
    // NaN cannot come from JSON, but infinities of f64 overflow are refused all the same.
    let f = SamplingFields {
        top_p: Some(f64::INFINITY),
        ..Default::default()
    };
    assert_eq!(
        sampling(&f, 1).unwrap_err().body().error.param.as_deref(),
        Some("top_p")
    );
    assert_eq!(top_logprobs(Some(20), "logprobs").ok(), Some(Some(20)));
    assert!(top_logprobs(Some(-1), "logprobs").is_err());
    assert_eq!(seed_for_choice(Some(u64::MAX), 1), Some(0));
}

#[test]
fn one_mapping_gives_status_type_code_and_retry_after() {
    let cases = [
        (
            ApiError::from(SubmitError::QueueFull),
            429,
            "rate_limit_error",
        ),
        (
            ApiError::from(SubmitError::ShuttingDown),
            503,
            "service_unavailable_error",
        ),
        (
            ApiError::from(SubmitError::PromptTooLong {
                n_tokens: 9,
                max_context: 8,
            }),
            400,
            "invalid_request_error",
        ),
        (
            ApiError::ModelNotFound("m".into()),
            404,
            "invalid_request_error",
        ),
        (
            ApiError::PayloadTooLarge { limit: 1 },
            413,
            "invalid_request_error",
        ),
        (ApiError::Internal("x".into()), 500, "server_error"),
    ];
    for (e, status, kind) in cases {
        assert_eq!(e.status().as_u16(), status, "{e}");
        assert_eq!(e.body().error.kind, kind, "{e}");
        let resp = e.clone().into_response();
        let retry = resp.headers().contains_key("retry-after");
        assert_eq!(retry, status == 429 || status == 503, "{e}");
    }
}

#[test]
fn metrics_render_prometheus_text() {
    let m = std::sync::Arc::new(Metrics::default());
    {
        let mut t = RequestTracker::new(m.clone(), std::time::Instant::now());
        t.token();
        t.token();
        t.finished(7, 2);
    }
    drop(RequestTracker::new(m.clone(), std::time::Instant::now())); // cancelled
    m.count(Outcome::Rejected);
    let text = m.render(None);
    for line in [
        "kiln_requests_total{outcome=\"success\"} 1",
        "kiln_requests_total{outcome=\"cancelled\"} 1",
        "kiln_requests_total{outcome=\"rejected\"} 1",
        "kiln_prompt_tokens_total 7",
        "kiln_generation_tokens_total 2",
        "kiln_time_to_first_token_seconds_count 1",
        "kiln_inter_token_latency_seconds_count 1",
        "kiln_e2e_request_latency_seconds_count 1",
        "kiln_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1",
        "# TYPE kiln_e2e_request_latency_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Buckets are cumulative: counts never decrease with `le`.
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("kiln_time_to_first_token_seconds_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // Every sample line is `name{labels} value` with a numeric value.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap_or("");
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
}
