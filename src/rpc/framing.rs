//! Finds where one JSON value ends in a byte stream.
//!
//! JSON-RPC over a stream socket has no framing: requests are JSON values back to back (SPDK's
//! client sends them pretty-printed). The scanner tracks brace depth outside strings, resuming
//! where it stopped, so each byte is looked at once however the stream is split into reads.

/// Deepest nesting a request may have; deeper is refused before it is parsed.
pub const MAX_DEPTH: u32 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The value does not start with `{` or `[`.
    NotAnObjectOrArray(u8),
    TooDeep,
    /// A closing bracket with nothing open.
    Unbalanced,
}

#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the buffer already scanned.
    pos: usize,
    /// Where the current value starts (after leading whitespace), once seen.
    start: Option<usize>,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl FrameScanner {
    /// Scans `buf` (which only ever grows at the end between calls, until `reset`).
    /// Returns `Ok(Some((start, end)))` when `buf[start..end]` is one complete value.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            let Some(start) = self.start else {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' | b'[' => {
                        self.start = Some(self.pos - 1);
                        self.depth = 1;
                        continue;
                    }
                    other => return Err(FrameError::NotAnObjectOrArray(other)),
                }
            };
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.checked_sub(1).ok_or(FrameError::Unbalanced)?;
                    if self.depth == 0 {
                        return Ok(Some((start, self.pos)));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Forgets the value just returned; call after removing `..end` from the buffer.
    pub fn reset(&mut self) {
        *self = FrameScanner::default();
    }

    /// True when no value has started (only whitespace so far).
    pub fn is_between_values(&self) -> bool {
        self.start.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize) -> Result<Vec<String>, FrameError> {
        let mut buf = Vec::new();
        let mut sc = FrameScanner::default();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some((s, e)) = sc.scan(&buf)? {
                out.push(String::from_utf8(buf[s..e].to_vec()).unwrap());
                buf.drain(..e);
                sc.reset();
            }
        }
        Ok(out)
    }

    #[test]
    fn splits_back_to_back_values_across_reads() {
        let input = br#" {"a":"}{\"x"} [1,{"b":[2]}]
{"c": "\\"}"#;
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                frames(input, chunk).unwrap(),
                vec![r#"{"a":"}{\"x"}"#, r#"[1,{"b":[2]}]"#, r#"{"c": "\\"}"#],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn refuses_garbage_depth_and_imbalance() {
        assert_eq!(frames(b"42", 10), Err(FrameError::NotAnObjectOrArray(b'4')));
        let deep = "[".repeat(MAX_DEPTH as usize + 1);
        assert_eq!(frames(deep.as_bytes(), 10), Err(FrameError::TooDeep));
        assert!(frames(b"{}}", 10).is_err());
    }
}
