//! QMP framing as QEMU does it: a byte stream split into top-level JSON values by tracking
//! nesting and strings, not lines (`qemu.qmp` sends no newline). Several values in one read and
//! one value over many reads both work; single-quoted strings are accepted (rewritten to JSON);
//! numbers and keywords stand alone at top level as QEMU's lexer sees them. Input that can never
//! be a value gets QEMU's error for each byte or token, word for word (checked against QEMU 10
//! in the suite): `stray '\u0001'` (the character itself, escaped on output) for a control
//! character, which also abandons the value it is in; `stray '\uFFFD'` for a byte or UTF-8
//! sequence outside ASCII; `stray '@'`; `invalid keyword 'abc'`; and `expecting value` for a
//! closing bracket, colon or comma at top level.
//! Size and nesting are bounded without recursion, so hostile input costs at most the size
//! limit.

/// Largest message accepted.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// What the splitter produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete top-level value, as JSON text (single quotes already rewritten).
    Value(Vec<u8>),
    /// Input that can never be a value; the text is QEMU's parse-error description.
    Error(String),
}

#[derive(Debug, Default)]
enum Str {
    #[default]
    None,
    Double,
    Single,
}

/// A token being read at top level, outside any bracket.
#[derive(Debug, Default, PartialEq, Eq)]
enum Token {
    #[default]
    None,
    /// Letters: `true`, `false`, `null`, or an invalid keyword.
    Keyword,
    /// A number.
    Number,
}

/// Incremental splitter; feed it whatever the socket returns.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    string: Str,
    escape: bool,
    /// The current value exceeded a limit: its bytes are dropped until it closes.
    discarding: bool,
    /// A keyword or number at top level, in `buf`.
    token: Token,
    /// After a stray character, input is skipped as QEMU's lexer does until a control
    /// character, a bracket, comma or colon, or a byte 0xFE/0xFF, where it starts again.
    recovering: bool,
}

/// QEMU's text for a stray character below 0x20 or 0x7f: the character itself (which QMP's
/// output escapes as `\u0001`), and nothing for NUL (QEMU's C string ends there).
fn stray_control(b: u8) -> String {
    if b == 0 {
        "JSON parse error, stray ''".into()
    } else {
        format!("JSON parse error, stray '{}'", char::from(b))
    }
}

impl Splitter {
    /// Consumes `input`, appending complete frames to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Frame>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.string = Str::None;
        self.escape = false;
        self.discarding = false;
        self.token = Token::None;
    }

    fn push(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.discarding {
            return;
        }
        if self.buf.len() >= MAX_MESSAGE {
            self.discarding = true;
            self.buf = Vec::new();
            out.push(Frame::Error(format!(
                "JSON parse error, message exceeds {MAX_MESSAGE} bytes"
            )));
            return;
        }
        self.buf.push(b);
    }

    fn finish_value(&mut self, out: &mut Vec<Frame>) {
        if !self.discarding {
            out.push(Frame::Value(std::mem::take(&mut self.buf)));
        }
        self.reset();
    }

    /// Ends a top-level keyword or number at a delimiter: a value, or QEMU's keyword error.
    fn finish_token(&mut self, out: &mut Vec<Frame>) {
        match std::mem::take(&mut self.token) {
            Token::None => return,
            Token::Keyword if !matches!(&self.buf[..], b"true" | b"false" | b"null") => {
                let word = String::from_utf8_lossy(&self.buf).into_owned();
                out.push(Frame::Error(format!(
                    "JSON parse error, invalid keyword '{word}'"
                )));
                self.reset();
                return;
            }
            Token::Keyword | Token::Number => {}
        }
        self.finish_value(out);
    }

    /// Reports a stray character and skips what follows until a resynchronisation point.
    fn stray(&mut self, text: String, out: &mut Vec<Frame>) {
        self.reset();
        self.recovering = true;
        out.push(Frame::Error(text));
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.recovering {
            let resync = (b < 0x20 && b != b'\t')
                || b >= 0xfe
                || matches!(b, b'[' | b']' | b'{' | b'}' | b',' | b':');
            if !resync {
                return;
            }
            self.recovering = false;
        }
        let in_string = !matches!(self.string, Str::None);
        // A control character (other than whitespace) anywhere abandons the value, as in QEMU.
        if (b < 0x20 && !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) || (b == 0x7f && !in_string) {
            return self.stray(stray_control(b), out);
        }
        if in_string {
            return self.string_byte(b, out);
        }
        if self.depth > 0 {
            return self.value_byte(b, out);
        }
        // Top level: a keyword or number goes on while its characters do.
        match self.token {
            Token::Keyword if b.is_ascii_alphabetic() => return self.push(b, out),
            Token::Number
                if b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-') =>
            {
                return self.push(b, out)
            }
            Token::None => {}
            _ => self.finish_token(out),
        }
        if b >= 0x80 {
            return self.stray("JSON parse error, stray '\u{FFFD}'".into(), out);
        }
        match b {
            // A string or a bracket starts as it does inside a value.
            b'"' | b'\'' | b'{' | b'[' => self.value_byte(b, out),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'}' | b']' | b':' | b',' => {
                out.push(Frame::Error("JSON parse error, expecting value".into()));
            }
            _ if b.is_ascii_alphabetic() => {
                self.token = Token::Keyword;
                self.push(b, out);
            }
            _ if b.is_ascii_digit() || b == b'-' => {
                self.token = Token::Number;
                self.push(b, out);
            }
            _ => self.stray(format!("JSON parse error, stray '{}'", b as char), out),
        }
    }

    /// A byte inside brackets (outside strings).
    fn value_byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        match b {
            b'"' => {
                self.string = Str::Double;
                self.push(b, out);
            }
            b'\'' => {
                self.string = Str::Single;
                self.push(b'"', out);
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH && !self.discarding {
                    self.discarding = true;
                    self.buf = Vec::new();
                    out.push(Frame::Error(format!(
                        "JSON parse error, nesting deeper than {MAX_DEPTH}"
                    )));
                }
                self.push(b, out);
            }
            b'}' | b']' => {
                self.push(b, out);
                self.depth -= 1;
                if self.depth == 0 {
                    self.finish_value(out);
                }
            }
            _ => self.push(b, out),
        }
    }

    fn string_byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        let single = matches!(self.string, Str::Single);
        if self.escape {
            self.escape = false;
            if single && b == b'\'' {
                // \' inside a single-quoted string is just a quote in JSON.
                if let Some(last) = self.buf.last_mut() {
                    *last = b'\'';
                }
                return;
            }
            self.push(b, out);
            return;
        }
        match b {
            b'\\' => {
                self.escape = true;
                self.push(b, out);
            }
            b'"' if single => {
                self.push(b'\\', out);
                self.push(b'"', out);
            }
            b'"' => {
                self.push(b, out);
                self.string = Str::None;
                if self.depth == 0 {
                    self.finish_value(out);
                }
            }
            b'\'' if single => {
                self.push(b'"', out);
                self.string = Str::None;
                if self.depth == 0 {
                    self.finish_value(out);
                }
            }
            _ => self.push(b, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        out
    }

    fn v(s: &str) -> Frame {
        Frame::Value(s.as_bytes().to_vec())
    }

    #[test]
    fn values_split_across_and_within_reads() {
        assert_eq!(
            split(&[b"{\"a\":1}{\"b\":[2]}"]),
            vec![v("{\"a\":1}"), v("{\"b\":[2]}")]
        );
        assert_eq!(
            split(&[b"{\"ex", b"ecute\":\"x\"", b"}"]),
            vec![v("{\"execute\":\"x\"}")]
        );
        assert_eq!(
            split(&[b"  \r\n{\"s\":\"}{\\\"\"}\n"]),
            vec![v("{\"s\":\"}{\\\"\"}")]
        );
        assert_eq!(split(&[b"\"top\" [1]"]), vec![v("\"top\""), v("[1]")]);
    }

    #[test]
    fn single_quotes_become_json() {
        assert_eq!(
            split(&[b"{'execute':'q','id':'it\\'s \"x\"'}"]),
            vec![v("{\"execute\":\"q\",\"id\":\"it's \\\"x\\\"\"}")]
        );
    }

    fn e(s: &str) -> Frame {
        Frame::Error(format!("JSON parse error, {s}"))
    }

    #[test]
    fn stray_bytes_and_control_characters_get_qemus_errors() {
        // Each as QEMU 10 answers it (tests/qmp.rs compares with a running QEMU).
        let stray = e("stray '\u{FFFD}'");
        assert_eq!(
            split(&[b"\xff\xfe{\"a\":1}"]),
            vec![stray.clone(), stray.clone(), v("{\"a\":1}")]
        );
        assert_eq!(split(&[b"\xc3\xa9 "]), vec![stray]);
        assert_eq!(
            split(&[b"{\"a\":\x01{\"b\":2}"]),
            vec![e("stray '\u{1}'"), v("{\"b\":2}")]
        );
        assert_eq!(
            split(&[b"\x00\x01\x1f\x7f"]),
            vec![e("stray ''"), e("stray '\u{1}'"), e("stray '\u{1f}'")],
            "0x7f is skipped while recovering"
        );
        assert_eq!(split(&[b"\x7f"]), vec![e("stray '\u{7f}'")]);
        assert_eq!(
            split(&[b"abc }"]),
            vec![e("invalid keyword 'abc'"), e("expecting value")]
        );
        assert_eq!(
            split(&[b"ab1 true @#, ]"]),
            vec![
                e("invalid keyword 'ab'"),
                v("1"),
                v("true"),
                e("stray '@'"),
                e("expecting value"),
                e("expecting value")
            ],
            "after '@', '#' is skipped; ',' and ']' start again"
        );
        assert_eq!(
            split(&[b"{\"execute\":\"quit\"\x00}"]),
            vec![e("stray ''"), e("expecting value")]
        );
        assert_eq!(split(&[b"tr", b"ue\n"]), vec![v("true")]);
    }

    #[test]
    fn limits_hold_and_the_stream_recovers() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000) + "{\"ok\":1}";
        let out = split(&[deep.as_bytes()]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(&out[0], Frame::Error(e) if e.contains("nesting")));
        assert_eq!(out[1], v("{\"ok\":1}"));
        let big = format!("{{\"a\":\"{}\"}}{{\"ok\":1}}", "x".repeat(MAX_MESSAGE));
        let out = split(&[big.as_bytes()]);
        assert!(matches!(&out[0], Frame::Error(e) if e.contains("exceeds")));
        assert_eq!(out[1], v("{\"ok\":1}"));
    }
}
