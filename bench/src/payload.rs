//! The request bodies of the benchmark: chat completions of an exact size, with
//! `model` as the first or the last top-level key.
//!
//! Plain std so that the root crate's `cargo bench` (benches/rewrite.rs) includes this
//! file too and both measure the very same bytes.

use std::fmt;

/// The body sizes measured, in bytes.
pub const SIZES: [usize; 4] = [1024, 16 * 1024, 200 * 1024, 1024 * 1024];

/// Where `model` sits among the top-level keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    First,
    Last,
}

impl Position {
    pub const ALL: [Position; 2] = [Position::First, Position::Last];

    pub fn name(self) -> &'static str {
        match self {
            Position::First => "first",
            Position::Last => "last",
        }
    }
}

/// `1 KiB`, `16 KiB`, `200 KiB`, `1 MiB`.
pub struct Size(pub usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 && self.0.is_multiple_of(1024 * 1024) {
            write!(f, "{} MiB", self.0 / (1024 * 1024))
        } else if self.0 >= 1024 && self.0.is_multiple_of(1024) {
            write!(f, "{} KiB", self.0 / 1024)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

const WORDS: [&str; 16] = [
    "the", "gateway", "retries", "provider", "with", "latency", "budget", "tokens", "stream",
    "answer", "request", "context", "window", "fallback", "chain", "prompt",
];

/// A chat completion body of exactly `size` bytes whose top-level `model` is `model`
/// (a plain name: no characters that JSON escapes). The conversation is a system
/// message and user/assistant turns of about 2 KiB each, with the escapes a real
/// prompt has (`\n`, `\"`), so that a scanner meets strings, nesting and escapes.
/// No string contains the word "model", so a naive text search finds the key.
pub fn chat_body(size: usize, model: &str, position: Position) -> Vec<u8> {
    let model_member = format!("\"model\":\"{model}\"");
    let (head, tail) = match position {
        Position::First => (format!("{{{model_member},\"messages\":["), String::new()),
        Position::Last => ("{\"messages\":[".to_owned(), format!(",{model_member}")),
    };
    let close = format!("],\"temperature\":0.2,\"max_tokens\":64{tail}}}");
    let mut body = head;
    let mut turn = 0usize;
    let mut word = 0usize;
    loop {
        let role = match turn {
            0 => "system",
            t if t % 2 == 1 => "user",
            _ => "assistant",
        };
        let open = format!(
            "{}{{\"role\":\"{role}\",\"content\":\"",
            if turn == 0 { "" } else { "," }
        );
        let end = "\"}";
        // Room left for this message's content if it were the last one.
        let fixed = body.len() + open.len() + end.len() + close.len();
        // Too small a size gets an empty last message and a longer body: the
        // assertion below catches it; every size in SIZES fits.
        let room = size.saturating_sub(fixed);
        let last = room <= 2048 + 256;
        let want = if last { room } else { 2048 };
        body.push_str(&open);
        let mut content = String::with_capacity(want + 16);
        while content.len() < want {
            let piece = match word % 23 {
                7 => "\\n",
                19 => " \\\"quoted\\\"",
                _ => WORDS.get(word % WORDS.len()).copied().unwrap_or("x"),
            };
            word += 1;
            if content.len() + 1 + piece.len() > want {
                break;
            }
            if !content.is_empty() {
                content.push(' ');
            }
            content.push_str(piece);
        }
        // Pad to the exact length with plain letters (never a lone backslash).
        while content.len() < want {
            content.push('x');
        }
        body.push_str(&content);
        body.push_str(end);
        turn += 1;
        if last {
            break;
        }
    }
    body.push_str(&close);
    debug_assert_eq!(body.len(), size, "chat body size");
    body.into_bytes()
}
