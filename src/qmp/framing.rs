//! QMP framing as QEMU does it: a byte stream split into top-level JSON values by tracking
//! nesting and strings, not lines (`qemu.qmp` sends no newline). Several values in one read and
//! one value over many reads both work; single-quoted strings are accepted (rewritten to JSON);
//! stray bytes and control characters produce an error and the splitter resynchronises. Size and
//! nesting are bounded without recursion, so hostile input costs at most the size limit.

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

/// Incremental splitter; feed it whatever the socket returns.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    string: Str,
    escape: bool,
    /// The current value exceeded a limit: its bytes are dropped until it closes.
    discarding: bool,
    /// A run of stray bytes at top level was already reported.
    stray_reported: bool,
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

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        let in_value = self.depth > 0 || !matches!(self.string, Str::None);
        // A control character (other than whitespace) anywhere resynchronises, as in QEMU.
        if b < 0x20 && !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if in_value {
                out.push(Frame::Error(
                    "JSON parse error, stray control character".into(),
                ));
            }
            self.reset();
            self.stray_reported = false;
            return;
        }
        match self.string {
            Str::Double | Str::Single => return self.string_byte(b, out),
            Str::None => {}
        }
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
                self.stray_reported = false;
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
            b'}' | b']' if self.depth > 0 => {
                self.push(b, out);
                self.depth -= 1;
                if self.depth == 0 {
                    self.finish_value(out);
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                if self.depth > 0 {
                    self.push(b, out);
                } else {
                    self.stray_reported = false;
                }
            }
            _ if self.depth > 0 => self.push(b, out),
            _ => {
                // Outside any value: a stray byte (or a run of them) is one error.
                if !self.stray_reported {
                    self.stray_reported = true;
                    let shown = if b.is_ascii_graphic() {
                        (b as char).to_string()
                    } else {
                        "\\uFFFD".into()
                    };
                    out.push(Frame::Error(format!("JSON parse error, stray '{shown}'")));
                }
            }
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

    #[test]
    fn stray_bytes_and_control_characters_resynchronise() {
        let out = split(&[b"\xff\xfe{\"a\":1}"]);
        assert_eq!(
            out,
            vec![
                Frame::Error("JSON parse error, stray '\\uFFFD'".into()),
                v("{\"a\":1}")
            ]
        );
        let out = split(&[b"{\"a\":\x01{\"b\":2}"]);
        assert_eq!(
            out,
            vec![
                Frame::Error("JSON parse error, stray control character".into()),
                v("{\"b\":2}")
            ]
        );
        assert_eq!(split(&[b"abc }"]).len(), 2, "two stray runs");
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
