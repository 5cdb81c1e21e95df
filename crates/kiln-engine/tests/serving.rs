//! The serving engine (EngineHandle) on the tiny LLaMA fixture (tests/fixtures/llama, random
//! weights, vocab 512) paired with the byte-level BPE tokenizer of tests/fixtures/roberta (also
//! 512 ids). The reference is `Engine::generate`, the single-request loop: a request must give
//! the same tokens and text through the engine, alone or among many, chunked or not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_engine::{
    Engine, EngineConfig, EngineHandle, EngineStats, Event, FinishReason, GenerateRequest,
    RequestStream, SamplingParams, SubmitError,
};

mod common;
use common::root;

fn fixture_engine() -> Arc<Engine> {
    engine_of("llama")
}

/// A decoder fixture with the 512-id roberta tokenizer (the fixtures' vocabularies are 512).
fn engine_of(fixture: &str) -> Arc<Engine> {
    let loaded = kiln_models::load(&root().join("tests/fixtures").join(fixture), &mut |_, _| {})
        .expect("fixture loads");
    let tokenizer =
        kiln_tokenizer::Tokenizer::from_file(root().join("tests/fixtures/roberta/tokenizer.json"))
            .expect("roberta fixture tokenizer");
    Arc::new(Engine::from_parts(loaded, tokenizer, Vec::new()))
}

/// Deterministic pseudo-random prompts of varied lengths over the fixture's vocabulary.
fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            5 + ((x >> 33) % 500) as u32
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

/// What a request's stream delivered.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    reason: FinishReason,
    completion_tokens: usize,
}

fn collect(mut s: RequestStream) -> Outcome {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match s.recv().expect("the stream ends with Finished") {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Finished {
                reason,
                text: t,
                usage,
                ..
            } => {
                text.push_str(&t);
                assert!(s.recv().is_none(), "nothing follows Finished");
                return Outcome {
                    ids,
                    text,
                    reason,
                    completion_tokens: usage.completion_tokens,
                };
            }
            Event::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

fn alone(e: &Engine, prompt: &[u32], params: &SamplingParams) -> Outcome {
    let g = e.generate(prompt, params, &mut |_| {}).expect("generate");
    Outcome {
        completion_tokens: g.token_ids.len(),
        ids: g.token_ids,
        text: g.text,
        reason: g.finish_reason,
    }
}

fn config(max_num_seqs: usize, max_num_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs,
        max_num_batched_tokens,
        ..EngineConfig::default()
    }
}

/// Submits every request at once, then collects; checks each against `generate` alone. The
/// engine's statistics at the end.
fn check_batch_invariance(
    e: &Arc<Engine>,
    cfg: EngineConfig,
    reqs: &[(Vec<u32>, SamplingParams)],
) -> EngineStats {
    let h = EngineHandle::start(e.clone(), cfg).expect("engine starts");
    let streams: Vec<RequestStream> = reqs
        .iter()
        .map(|(p, sp)| {
            h.submit(GenerateRequest::new(p.clone(), sp.clone()))
                .expect("submit")
        })
        .collect();
    for (i, (s, (p, sp))) in streams.into_iter().zip(reqs).enumerate() {
        let got = collect(s);
        let want = alone(e, p, sp);
        assert_eq!(got, want, "request {i} (prompt of {} tokens)", p.len());
    }
    h.shutdown();
    let st = h.stats();
    assert_eq!((st.running, st.waiting), (0, 0));
    assert_eq!(st.finished_stop + st.finished_length, reqs.len() as u64);
    st
}

#[test]
fn thirty_two_concurrent_greedy_requests_match_each_alone() {
    let e = fixture_engine();
    let reqs: Vec<_> = (0..32)
        .map(|i| {
            (
                prompt(i, 1 + (i as usize * 7) % 40),
                greedy(8 + i as usize % 13),
            )
        })
        .collect();
    check_batch_invariance(&e, config(64, 512), &reqs);
}

#[test]
fn chunked_prefill_with_a_small_budget_matches_unchunked() {
    let e = fixture_engine();
    // 5 tokens per step for 3 sequences: long prompts are cut into chunks that share steps with
    // other sequences' decodes.
    let reqs: Vec<_> = (0..6)
        .map(|i| (prompt(100 + i, 10 + 9 * i as usize), greedy(12)))
        .collect();
    check_batch_invariance(&e, config(3, 5), &reqs);
}

/// Sampled requests carry their own seed and penalties. Exact equality with `generate` needs
/// bit-identical logits, which a different batch composition does not guarantee (the matmul
/// kernels may block a 12-row batch differently from a 1-row one, and a draw near a boundary
/// then flips), so each request runs through the engine with nothing beside it, while other
/// requests of the same engine come and go in between.
#[test]
fn seeded_sampling_and_stop_strings_are_per_sequence() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), config(8, 16)).unwrap();
    for i in 0..12u64 {
        let sp = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: Some(1000 + i),
            max_tokens: 20,
            repetition_penalty: 1.1,
            stop: if i % 3 == 0 { vec!["e".into()] } else { vec![] },
            ..SamplingParams::default()
        };
        let p = prompt(200 + i, 3 + i as usize);
        let got = collect(
            h.submit(GenerateRequest::new(p.clone(), sp.clone()))
                .unwrap(),
        );
        assert_eq!(got, alone(&e, &p, &sp), "request {i}");
        if i % 3 == 0 {
            assert!(!got.text.contains('e'));
        }
    }
    h.shutdown();
}

/// A KV pool of exactly one full context (8 blocks of 16 for the fixture's 128) shared by 8
/// requests that together need far more: sequences are preempted, recomputed, and still give
/// exactly the tokens they give alone.
#[test]
fn preemption_by_recomputation_loses_no_token() {
    let e = fixture_engine();
    let per_block =
        kiln_engine::kv_bytes_per_token(&e, kiln_engine::KvCacheDtype::F32).unwrap() * 16;
    let cfg = EngineConfig {
        kv_cache_memory: Some(8 * per_block),
        ..config(8, 64)
    };
    let reqs: Vec<_> = (0..8)
        .map(|i| {
            let sp = SamplingParams {
                ignore_eos: true,
                ..greedy(30 + 5 * i as usize)
            };
            (prompt(400 + i, 10 + 3 * i as usize), sp)
        })
        .collect();
    let h = EngineHandle::start(e.clone(), cfg.clone()).unwrap();
    assert_eq!(h.stats().kv_blocks_total, 8);
    drop(h);
    check_batch_invariance(&e, cfg.clone(), &reqs);
    let h = EngineHandle::start(e.clone(), cfg).unwrap();
    let streams: Vec<_> = reqs
        .iter()
        .map(|(p, sp)| {
            h.submit(GenerateRequest::new(p.clone(), sp.clone()))
                .unwrap()
        })
        .collect();
    streams.into_iter().for_each(|s| drop(collect(s)));
    h.shutdown();
    let st = h.stats();
    assert!(st.preemptions > 0, "the pool was meant to run out: {st:?}");
    assert_eq!(st.kv_blocks_used, 0, "every block released: {st:?}");
    eprintln!("preemptions: {}", st.preemptions);
}

/// Sliding-window models (the Mistral fixture: every layer sees the last 8 positions) release a
/// sequence's blocks that fell out of its window after every step: 6 sequences of 75–105
/// positions (105 blocks of 4 positions in all) run in a pool of 32 blocks, one full context,
/// without a single preemption, and give exactly what each gives alone. Without the release
/// the pool runs out and sequences are preempted.
#[test]
fn sliding_window_blocks_are_released_after_each_step() {
    let e = engine_of("mistral");
    let per_block =
        kiln_engine::kv_bytes_per_token(&e, kiln_engine::KvCacheDtype::F32).unwrap() * 4;
    let cfg = EngineConfig {
        block_size: 4,
        kv_cache_memory: Some(32 * per_block),
        ..config(6, 64)
    };
    let reqs: Vec<_> = (0..6)
        .map(|i| {
            let sp = SamplingParams {
                ignore_eos: true,
                ..greedy(35 + i as usize)
            };
            (prompt(700 + i, 40 + 5 * i as usize), sp)
        })
        .collect();
    let st = check_batch_invariance(&e, cfg, &reqs);
    assert_eq!(st.kv_blocks_total, 32);
    assert_eq!(st.preemptions, 0, "windowed sequences fit: {st:?}");
    assert_eq!(st.kv_blocks_used, 0, "every block released: {st:?}");
}

/// Requests sharing a 64-token prefix: the later ones take its blocks from the prefix cache
/// (reported in `usage.cached_tokens`) and still give what they give alone (computed from
/// scratch by `generate`).
#[test]
fn prefix_cache_hits_give_the_same_output_as_misses() {
    let e = fixture_engine();
    let shared = prompt(500, 64);
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..6)
        .map(|i| {
            let mut p = shared.clone();
            p.extend(prompt(600 + i, 1 + i as usize * 5));
            (p, greedy(10))
        })
        .collect();
    let h = EngineHandle::start(e.clone(), config(4, 64)).unwrap();
    // The first runs alone and fills the cache; then the rest run together.
    let mut cached = Vec::new();
    let mut run = |p: &Vec<u32>, sp: &SamplingParams| {
        let mut s = h
            .submit(GenerateRequest::new(p.clone(), sp.clone()))
            .unwrap();
        let mut ids = Vec::new();
        loop {
            match s.recv().unwrap() {
                Event::Token { id, .. } => ids.push(id),
                Event::Finished { usage, .. } => {
                    cached.push(usage.cached_tokens);
                    break;
                }
                Event::Failed(m) => panic!("{m}"),
            }
        }
        ids
    };
    for (p, sp) in &reqs {
        assert_eq!(run(p, sp), alone(&e, p, sp).ids);
    }
    assert_eq!(cached[0], 0);
    assert!(cached[1..].iter().all(|&c| c == 64), "{cached:?}");
    let st = h.stats();
    assert!(st.prefix_cache_hits >= 5 * 64, "{st:?}");
    h.shutdown();
    // All at once on a fresh engine: hits come as soon as the first chunk commits its blocks.
    check_batch_invariance(&e, config(6, 32), &reqs);
}

/// KV memory waste (allocated slots holding no token) under a mixed workload of 24 requests
/// (prompts 10..100 tokens, 5..28 generated), sampled while they run. Paged allocation wastes
/// only the tail of each sequence's last block, so with 4-token blocks (sequences here are at
/// most 128 tokens, the fixture's context) the waste stays under 4%; every sample also obeys
/// the structural bound of `block_size - 1` slots per running sequence.
#[test]
fn kv_waste_stays_below_four_percent_under_a_mixed_workload() {
    let e = fixture_engine();
    let block_size = 4;
    let cfg = EngineConfig {
        block_size,
        enable_prefix_caching: false,
        ..config(24, 64)
    };
    let h = EngineHandle::start(e.clone(), cfg).unwrap();
    let streams: Vec<_> = (0..24u64)
        .map(|i| {
            let sp = SamplingParams {
                ignore_eos: true,
                ..greedy(5 + (i as usize * 7) % 24)
            };
            h.submit(GenerateRequest::new(
                prompt(700 + i, 10 + (i as usize * 37) % 90),
                sp,
            ))
            .unwrap()
        })
        .collect();
    let reader = std::thread::spawn(move || streams.into_iter().for_each(|s| drop(collect(s))));
    let (mut alloc, mut used, mut samples) = (0usize, 0usize, 0);
    while !reader.is_finished() {
        let st = h.stats();
        if st.kv_slots_allocated > 0 {
            assert!(
                st.kv_slots_allocated - st.kv_slots_used <= (block_size - 1) * st.running.max(1),
                "{st:?}"
            );
            alloc += st.kv_slots_allocated;
            used += st.kv_slots_used;
            samples += 1;
        }
        std::thread::yield_now();
    }
    reader.join().unwrap();
    h.shutdown();
    let waste = 1.0 - used as f64 / alloc.max(1) as f64;
    eprintln!("KV waste {:.2}% over {samples} samples", 100.0 * waste);
    assert!(samples > 0);
    assert!(waste < 0.04, "waste {waste}");
}

#[test]
fn logprobs_are_the_model_log_softmax() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), EngineConfig::default()).unwrap();
    let p = prompt(7, 9);
    let mut s = h
        .submit(GenerateRequest {
            logprobs: Some(3),
            ..GenerateRequest::new(p.clone(), greedy(1))
        })
        .unwrap();
    let Some(Event::Token { id, logprob, .. }) = s.recv() else {
        panic!("a token first")
    };
    let lp = logprob.expect("logprobs asked for");
    let mut cache = e.model.new_cache();
    let logits = e.step(&mut cache, &p, 1).unwrap().into_f32_vec();
    let want = kiln_engine::log_softmax(&logits);
    assert_eq!(lp.id, id);
    assert!((lp.logprob - want[id as usize]).abs() < 1e-4);
    assert_eq!(lp.top.len(), 3);
    assert_eq!(lp.top[0].0, id, "greedy picks the most likely token");
    for &(t, l) in &lp.top {
        assert!((l - want[t as usize]).abs() < 1e-4);
    }
    assert!(matches!(s.recv(), Some(Event::Finished { .. })));
    h.shutdown();
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), EngineConfig::default()).unwrap();
    let sub = |prompt: Vec<u32>, params: SamplingParams, logprobs| {
        h.submit(GenerateRequest {
            logprobs,
            ..GenerateRequest::new(prompt, params)
        })
        .unwrap_err()
    };
    assert_eq!(sub(vec![], greedy(4), None), SubmitError::EmptyPrompt);
    assert_eq!(
        sub(vec![5; 128], greedy(4), None),
        SubmitError::PromptTooLong {
            n_tokens: 128,
            max_context: 128
        }
    );
    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(4)
    };
    assert!(
        matches!(sub(vec![5], bad, None), SubmitError::InvalidParams(m) if m.contains("top_p"))
    );
    assert!(matches!(
        sub(vec![5], greedy(4), Some(21)),
        SubmitError::InvalidParams(_)
    ));
    h.shutdown();
    assert_eq!(sub(vec![5], greedy(4), None), SubmitError::ShuttingDown);
}

#[test]
fn queue_full_priorities_and_cancellation() {
    let e = fixture_engine();
    let long = SamplingParams {
        ignore_eos: true,
        ..greedy(100)
    };
    // One sequence at a time, eight long requests queued behind the first: the queue stays
    // long for hundreds of steps, so what follows does not race the engine.
    let h = EngineHandle::start(e.clone(), config(1, 64)).unwrap();
    // Each stream with the instant just before its submit: submit instant + queue_ms is when
    // the request started running.
    let submit = |req: GenerateRequest| (Instant::now(), h.submit(req).unwrap());
    let mut queued: Vec<(Instant, RequestStream)> = (0..8)
        .map(|i| submit(GenerateRequest::new(prompt(10 + i, 4), long.clone())))
        .collect();
    assert!(matches!(queued[0].1.recv(), Some(Event::Token { .. })));
    let low = submit(GenerateRequest {
        priority: 5,
        ..GenerateRequest::new(prompt(2, 4), greedy(4))
    });
    let high = submit(GenerateRequest {
        priority: -1,
        ..GenerateRequest::new(prompt(3, 4), greedy(4))
    });
    // Cancelling the running request frees its slot: the high-priority request runs next,
    // ahead of the seven queued at priority 0 and of the low one.
    drop(queued.remove(0));
    let started = |(at, mut s): (Instant, RequestStream)| loop {
        match s.recv().expect("finishes") {
            Event::Finished { timings, .. } => {
                break at + Duration::from_secs_f64(timings.queue_ms / 1e3)
            }
            Event::Failed(e) => panic!("{e}"),
            Event::Token { .. } => {}
        }
    };
    let t_high = started(high);
    let t_queued: Vec<Instant> = queued.into_iter().map(started).collect();
    let t_low = started(low);
    // Only the request running when `high` arrived may have started before it (if the
    // cancelled one happened to finish first, on a slow machine).
    assert!(
        t_queued.iter().filter(|&&t| t < t_high).count() <= 1,
        "priority -1 before 0"
    );
    assert!(t_queued.iter().all(|&t| t < t_low), "priority 0 before 5");
    h.shutdown();
    let st = h.stats();
    assert_eq!(st.cancelled, 1);
    assert_eq!(st.finished_stop + st.finished_length, 9);

    // A queue of two: submitting faster than one sequence at a time can drain must hit it.
    let cfg = EngineConfig {
        max_waiting: 2,
        ..config(1, 64)
    };
    let h = EngineHandle::start(e.clone(), cfg).unwrap();
    let results: Vec<_> = (0..50)
        .map(|i| h.submit(GenerateRequest::new(prompt(20 + i, 4), long.clone())))
        .collect();
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(SubmitError::QueueFull))));
    assert!(h.stats().waiting <= 2);
    drop(results);
    h.shutdown();
}

/// Dropping a stream cancels its request: its KV blocks are back in the pool at the next step,
/// while another request keeps running.
#[test]
fn dropping_a_stream_frees_its_blocks() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), config(2, 64)).unwrap();
    let long = SamplingParams {
        ignore_eos: true,
        ..greedy(100)
    };
    // `a` holds 7 blocks from its prompt alone, so `a` and `b` together hold at least 8.
    let mut a = h
        .submit(GenerateRequest::new(
            prompt(30, 100),
            SamplingParams {
                ignore_eos: true,
                ..greedy(20)
            },
        ))
        .unwrap();
    let mut b = h.submit(GenerateRequest::new(prompt(31, 4), long)).unwrap();
    assert!(matches!(a.recv(), Some(Event::Token { .. })));
    assert!(matches!(b.recv(), Some(Event::Token { .. })));
    drop(a);
    // `b` (at most 104 tokens, 7 blocks of 16) is the only one left holding blocks.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = h.stats();
        // The cancel is counted when the loop drops the request; `running` and the block counts
        // are published together at the end of that step (`steps` already counts a step that
        // is still running, so it cannot tell).
        if st.cancelled == 1 && st.running == 1 {
            assert!(st.kv_blocks_used <= 7, "{st:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cancel not seen: {st:?}"
        );
        std::thread::yield_now();
    }
    assert!(matches!(
        collect_finished(&mut b),
        Some(FinishReason::Length)
    ));
    h.shutdown();
    assert_eq!(h.stats().kv_blocks_used, 0);
}

fn collect_finished(s: &mut RequestStream) -> Option<FinishReason> {
    while let Some(ev) = s.recv() {
        if let Event::Finished { reason, .. } = ev {
            return Some(reason);
        }
    }
    None
}

#[test]
fn shutdown_finishes_everything_queued() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), config(2, 8)).unwrap();
    let streams: Vec<_> = (0..6)
        .map(|i| {
            h.submit(GenerateRequest::new(prompt(300 + i, 5), greedy(6)))
                .unwrap()
        })
        .collect();
    let h2 = h.clone();
    let t = std::thread::spawn(move || h2.shutdown());
    for s in streams {
        collect(s);
    }
    t.join().unwrap();
    h.shutdown(); // a second call returns at once
    assert_eq!(h.stats().finished_stop + h.stats().finished_length, 6);
}

#[test]
fn async_next_works_from_a_runtime() {
    let e = fixture_engine();
    let h = EngineHandle::start(e.clone(), EngineConfig::default()).unwrap();
    let p = prompt(9, 6);
    let want = alone(&e, &p, &greedy(5));
    let mut s = h.submit(GenerateRequest::new(p, greedy(5))).unwrap();
    // A hand-rolled executor is enough: poll `next()` with a no-op waker until ready.
    let mut ids = Vec::new();
    loop {
        let ev = block_on(s.next());
        match ev.expect("event") {
            Event::Token { id, .. } => ids.push(id),
            Event::Finished { .. } => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(ids, want.ids);
    h.shutdown();
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// The default model: 32 concurrent greedy chat requests through the engine (prompts cut into
/// chunks by a 256-token budget, prefix-cache hits on the shared chat-template prefix), each
/// token for token what `generate` returns for it alone. Exactness rests on properties tested
/// where they live: a token's quantized matmul gives the same bits alone or in any batch
/// (kiln-quant `a_token_gets_the_same_bits_alone_or_in_a_batch`); a prompt row's attention gives
/// the same bits however the prompt is chunked (`PagedKv::prompt_rows`, the blocked path's fixed
/// gemm shapes and visible-keys softmax); decode rows attend over their own sequence only.
#[test]
fn smollm2_thirty_two_concurrent_greedy_requests_match_each_alone() {
    let Some(path) = common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf", "") else {
        return;
    };
    let e = Arc::new(Engine::load(&path, &mut |_, _| {}).expect("SmolLM2 loads"));
    let topics = [
        "the sea", "a cat", "Rust", "winter", "bread", "the moon", "music", "a river",
    ];
    let reqs: Vec<_> = (0..32)
        .map(|i| {
            let q = format!(
                "Write one sentence about {} (#{i}).",
                topics[i % topics.len()]
            );
            (e.encode_prompt(&q, true).unwrap(), greedy(12 + i % 9))
        })
        .collect();
    let h = EngineHandle::start(e.clone(), config(32, 256)).unwrap();
    let streams: Vec<_> = reqs
        .iter()
        .map(|(p, sp)| {
            h.submit(GenerateRequest::new(p.clone(), sp.clone()))
                .unwrap()
        })
        .collect();
    for (i, (s, (p, sp))) in streams.into_iter().zip(&reqs).enumerate() {
        assert_eq!(collect(s), alone(&e, p, sp), "request {i}");
    }
    let st = h.stats();
    assert!(
        st.prefix_cache_hits > 0,
        "the shared chat prefix was reused"
    );
    h.shutdown();
}

/// GPT-2 (learned positions) and BLOOM (ALiBi) fixtures through the paged engine: 8 concurrent
/// greedy requests, chunked prefill, each equal to `generate` alone.
#[test]
fn gpt2_and_bloom_fixtures_batched_match_each_alone() {
    for family in ["gpt2", "bloom"] {
        let loaded = kiln_models::load(&root().join("tests/fixtures").join(family), &mut |_, _| {})
            .expect("fixture loads");
        let tokenizer = kiln_tokenizer::Tokenizer::from_file(
            root().join("tests/fixtures/roberta/tokenizer.json"),
        )
        .expect("roberta fixture tokenizer");
        let e = Arc::new(Engine::from_parts(loaded, tokenizer, Vec::new()));
        let (vocab, ctx) = (e.info.vocab_size as u32, e.info.max_context);
        let reqs: Vec<_> = (0..8u64)
            .map(|i| {
                let len = 1 + (i as usize * 5) % (ctx / 2);
                let p: Vec<u32> = prompt(900 + i, len).iter().map(|t| t % vocab).collect();
                (p, greedy((ctx - len - 1).min(6 + i as usize)))
            })
            .collect();
        check_batch_invariance(&e, config(4, 8), &reqs);
    }
}
