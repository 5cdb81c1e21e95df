//! Stop strings over streamed text.
//!
//! The detokenizer hands over newly decoded text pieces; [`StopChecker::push`] returns the part
//! that can be shown to the client now and whether a stop string was completed. Text that could
//! still turn out to be the start of a stop string is held back, so a stop string split across
//! pieces (`"##"` then `"#"`) is never partly streamed. On a hit the output is truncated right
//! before the stop string, which is not included (OpenAI semantics).
//!
//! Which stop wins: the check runs after every piece, so the first piece that completes any stop
//! string ends the sequence (as a token-by-token engine would). Among the stops completed by that
//! piece, the occurrence that starts earliest wins. vLLM instead takes the first in list order;
//! earliest-start is the rule that never streams a stop string's text.
//!
//! Invariant: `held` is always the longest suffix of the text seen so far that is a proper prefix
//! of some stop string, so a match can only start inside `held` or the new piece, and the search
//! per piece costs O(max stop length + piece length), not O(text length).

/// What one [`StopChecker::push`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopUpdate {
    /// Text that is safe to emit now.
    pub text: String,
    /// Index (into the stop list given to [`StopChecker::new`]) of the stop string that was hit;
    /// `Some` on this push and every later one.
    pub stop: Option<usize>,
}

impl StopUpdate {
    /// True when the sequence must end.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_some()
    }
}

/// Finds stop strings in streamed text for one sequence.
#[derive(Debug, Clone, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    /// Longest stop string in bytes; at most `max_len - 1` bytes are ever held back.
    max_len: usize,
    held: String,
    stopped: Option<usize>,
}

impl StopChecker {
    /// A checker for `stops`. Empty strings are ignored (`SamplingParams::validate` rejects them;
    /// here one would match before any text).
    pub fn new(stops: &[String]) -> Self {
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        StopChecker {
            stops: stops.to_vec(),
            max_len,
            held: String::new(),
            stopped: None,
        }
    }

    /// The stop string that was hit, if any.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped
            .and_then(|i| self.stops.get(i))
            .map(String::as_str)
    }

    /// Feeds the next decoded piece; returns what can be emitted and whether a stop was hit.
    /// After a hit every later push returns no text and the same stop index.
    pub fn push(&mut self, piece: &str) -> StopUpdate {
        if self.stopped.is_some() {
            return StopUpdate {
                text: String::new(),
                stop: self.stopped,
            };
        }
        if self.max_len == 0 {
            return StopUpdate {
                text: piece.to_owned(),
                stop: None,
            };
        }
        self.held.push_str(piece);
        if let Some((start, index)) = self.earliest_match() {
            self.held.truncate(start);
            self.stopped = Some(index);
            return StopUpdate {
                text: std::mem::take(&mut self.held),
                stop: Some(index),
            };
        }
        let cut = self.held.len() - self.partial_suffix_len();
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopUpdate { text, stop: None }
    }

    /// Ends the stream without a stop (EOS or length): returns the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// `(byte offset, stop index)` of the occurrence in `held` that starts first (ties: the
    /// earlier stop in the list).
    fn earliest_match(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (index, stop) in self.stops.iter().enumerate() {
            if stop.is_empty() {
                continue;
            }
            if let Some(start) = self.held.find(stop.as_str()) {
                if best.is_none_or(|(b, _)| start < b) {
                    best = Some((start, index));
                }
            }
        }
        best
    }

    /// Length in bytes of the longest suffix of `held` (starting on a char boundary) that is a
    /// proper prefix of some stop string.
    fn partial_suffix_len(&self) -> usize {
        let len = self.held.len();
        let longest = len.min(self.max_len.saturating_sub(1));
        (1..=longest)
            .rev()
            .filter(|&k| self.held.is_char_boundary(len - k))
            .find(|&k| {
                let suffix = &self.held[len - k..];
                self.stops
                    .iter()
                    .any(|s| s.len() > k && s.starts_with(suffix))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Pushes every piece; returns the emitted text per push, the total and the stop index.
    fn run(list: &[&str], pieces: &[&str]) -> (Vec<String>, String, Option<usize>) {
        let mut checker = StopChecker::new(&stops(list));
        let mut per_push = Vec::new();
        let mut stop = None;
        for piece in pieces {
            let update = checker.push(piece);
            stop = update.stop;
            per_push.push(update.text);
        }
        let mut total: String = per_push.concat();
        if stop.is_none() {
            total.push_str(&checker.finish());
        }
        (per_push, total, stop)
    }

    #[test]
    fn no_stops_passes_through() {
        let (per_push, total, stop) = run(&[], &["ab", "c"]);
        assert_eq!(per_push, ["ab", "c"]);
        assert_eq!(total, "abc");
        assert_eq!(stop, None);
    }

    #[test]
    fn stop_split_across_pieces_is_never_streamed() {
        let (per_push, total, stop) = run(&["###"], &["Hello #", "#", "# world"]);
        assert_eq!(per_push, ["Hello ", "", ""]);
        assert_eq!(total, "Hello ");
        assert_eq!(stop, Some(0));
    }

    #[test]
    fn false_alarm_is_released() {
        let (per_push, total, stop) = run(&["###"], &["a#", "#b", "c"]);
        assert_eq!(per_push, ["a", "##b", "c"]);
        assert_eq!(total, "a##bc");
        assert_eq!(stop, None);
    }

    #[test]
    fn held_text_is_flushed_by_finish() {
        let mut checker = StopChecker::new(&stops(&["</s>"]));
        assert_eq!(checker.push("end</").text, "end");
        assert_eq!(checker.finish(), "</");
    }

    #[test]
    fn overlapping_prefixes() {
        // "aab": after "aaa" only the last "aa" can still start a match.
        let (per_push, total, stop) = run(&["aab"], &["a", "a", "a", "b"]);
        assert_eq!(per_push, ["", "", "a", ""]);
        assert_eq!(total, "a");
        assert_eq!(stop, Some(0));
        // "abab" inside "ababab": the first occurrence wins.
        let (_, total, stop) = run(&["abab"], &["x", "ab", "a", "bab"]);
        assert_eq!(total, "x");
        assert_eq!(stop, Some(0));
        let (_, total, stop) = run(&["abab"], &["a", "b", "a", "c"]);
        assert_eq!(total, "abac");
        assert_eq!(stop, None);
    }

    #[test]
    fn earliest_occurrence_wins_within_a_piece() {
        let (_, total, stop) = run(&["world", "lo w"], &["hello world"]);
        assert_eq!(total, "hel");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn first_completed_stop_ends_the_stream() {
        // "b" completes before "abc" could: the stream ends at "a".
        let (_, total, stop) = run(&["abc", "b"], &["a", "b", "c"]);
        assert_eq!(total, "a");
        assert_eq!(stop, Some(1));
    }

    #[test]
    fn pushes_after_stop_emit_nothing() {
        let mut checker = StopChecker::new(&stops(&["x"]));
        assert_eq!(
            checker.push("axb"),
            StopUpdate {
                text: "a".into(),
                stop: Some(0)
            }
        );
        assert_eq!(
            checker.push("more"),
            StopUpdate {
                text: String::new(),
                stop: Some(0)
            }
        );
        assert_eq!(checker.stopped(), Some("x"));
        assert_eq!(checker.finish(), "");
    }

    #[test]
    fn unicode_stops_and_text() {
        let (per_push, total, stop) = run(&["世界"], &["你好世", "界!"]);
        assert_eq!(per_push, ["你好", ""]);
        assert_eq!(total, "你好");
        assert_eq!(stop, Some(0));
        // A held multi-byte char released whole when the match fails.
        let (per_push, total, _) = run(&["→x"], &["a→", "y"]);
        assert_eq!(per_push, ["a", "→y"]);
        assert_eq!(total, "a→y");
        // A stop whose first char shares a UTF-8 lead byte with the text's char.
        let (_, total, stop) = run(&["é!"], &["caf", "è", "é", "!"]);
        assert_eq!(total, "cafè");
        assert_eq!(stop, Some(0));
    }

    fn piece_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop::sample::select(vec!['a', 'b', '#', 'é', '界']), 0..4)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn streamed_output_is_consistent(
            pieces in proptest::collection::vec(piece_strategy(), 0..12),
            stop_list in proptest::collection::vec(
                piece_strategy().prop_filter("non-empty", |s| !s.is_empty()), 0..3),
        ) {
            let text: String = pieces.concat();
            let list: Vec<&str> = stop_list.iter().map(String::as_str).collect();
            let piece_refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (_, total, stop) = run(&list, &piece_refs);
            prop_assert!(text.starts_with(&total));
            for s in &stop_list {
                prop_assert!(!total.contains(s.as_str()), "output {total:?} contains stop {s:?}");
            }
            match stop {
                Some(i) => prop_assert!(text[total.len()..].starts_with(&stop_list[i])),
                None => {
                    prop_assert_eq!(&total, &text);
                    for s in &stop_list {
                        prop_assert!(!text.contains(s.as_str()));
                    }
                }
            }
        }

        /// One char per piece: the stream stops at the stop occurrence that ends first.
        #[test]
        fn char_by_char_matches_reference(
            text in proptest::collection::vec(piece_strategy(), 0..8).prop_map(|v| v.concat()),
            stop_list in proptest::collection::vec(
                piece_strategy().prop_filter("non-empty", |s| !s.is_empty()), 1..3),
        ) {
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let piece_refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            let list: Vec<&str> = stop_list.iter().map(String::as_str).collect();
            let (_, total, _) = run(&list, &piece_refs);
            // Reference: the first prefix (by end) that ends with a stop; the longest such stop.
            let ends: Vec<usize> = text.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
            let expected = ends
                .iter()
                .find_map(|&end| {
                    stop_list
                        .iter()
                        .filter(|s| text[..end].ends_with(s.as_str()))
                        .map(|s| end - s.len())
                        .min()
                })
                .map_or(text.as_str(), |start| &text[..start]);
            prop_assert_eq!(total, expected);
        }
    }
}
