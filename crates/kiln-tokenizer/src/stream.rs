//! Incremental detokenization: push ids one at a time, get back newly completed text.
//!
//! Reference: text-generation-inference's `decode_token` (prefix_offset / read_offset). Decoding
//! a single token alone is wrong in two ways: a byte-level or byte-fallback token may be part of a
//! UTF-8 character, and SentencePiece decoders strip the leading space of the first token they
//! see. So each step decodes a small window `ids[prefix_offset..]` and emits only what extends the
//! decode of `ids[prefix_offset..read_offset]`; text ending in U+FFFD (an incomplete character) is
//! held back until a later token completes it.
//!
//! Invariant: the concatenation of everything returned by `push` and then `flush` equals
//! `Tokenizer::decode(all ids)`, for decoders whose output for a window extends its output for the
//! window's prefix (byte-level, SentencePiece). Memory stays bounded: ids before `prefix_offset`
//! are dropped.

use crate::{Error, Result, Tokenizer};

/// See the module documentation.
#[derive(Debug)]
pub struct DecodeStream<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'t> DecodeStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> DecodeStream<'t> {
        DecodeStream {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id; returns the text it completes, or `None` if nothing new is complete yet.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        if id as usize >= self.tokenizer.vocab_size() {
            return Err(Error::UnknownTokenId {
                id,
                vocab_size: self.tokenizer.vocab_size(),
            });
        }
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let new = self.suffix(&full, &prefix);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            self.compact();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Text still held back (an incomplete character at the very end decodes as U+FFFD, just as
    /// `Tokenizer::decode` would render it). Resets nothing; call once at the end.
    pub fn flush(&mut self) -> Result<Option<String>> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.compact();
        if full.len() > prefix.len() {
            Ok(Some(self.suffix(&full, &prefix)))
        } else {
            Ok(None)
        }
    }

    /// All ids pushed and not yet dropped (the current window).
    pub fn window(&self) -> &[u32] {
        &self.ids[self.prefix_offset..]
    }

    fn decode(&self, start: usize, end: usize) -> Result<String> {
        self.tokenizer
            .decode(&self.ids[start..end], self.skip_special_tokens)
    }

    /// `full` minus its `prefix`. When the decoder did not extend the prefix (not expected for
    /// supported decoders), fall back to the part after the longest common prefix.
    fn suffix(&self, full: &str, prefix: &str) -> String {
        if let Some(rest) = full.strip_prefix(prefix) {
            return rest.to_string();
        }
        let common = full
            .char_indices()
            .zip(prefix.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map(|((i, c), _)| i + c.len_utf8())
            .unwrap_or(0);
        full[common..].to_string()
    }

    fn compact(&mut self) {
        if self.prefix_offset > 0 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}
