//! Inline (telnet-style) commands: a line split into arguments the way Redis's `sdssplitargs`
//! splits it, quotes, escapes and all.

/// C's `isspace` in the "C" locale (which, unlike Rust's `is_ascii_whitespace`, includes `\v`).
fn c_isspace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Splits `line` into arguments with Redis's quoting rules; `None` on unbalanced quotes (or a
/// closing quote followed by something other than a space). The line is read as a C string:
/// a NUL byte ends it.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    // Reading past the end gives NUL, as in C.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && c_isspace(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = at(i);
            if in_dq {
                match c {
                    b'\\' if at(i + 1) == b'x' => match (hex_val(at(i + 2)), hex_val(at(i + 3))) {
                        (Some(hi), Some(lo)) => {
                            cur.push(hi * 16 + lo);
                            i += 3;
                        }
                        _ => {
                            // `\x` without two hex digits: the escaped character itself.
                            i += 1;
                            cur.push(b'x');
                        }
                    },
                    b'\\' if at(i + 1) != 0 => {
                        i += 1;
                        cur.push(match at(i) {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    b'"' => {
                        if at(i + 1) != 0 && !c_isspace(at(i + 1)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    0 => return None,
                    _ => cur.push(c),
                }
            } else if in_sq {
                match c {
                    b'\\' if at(i + 1) == b'\'' => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    b'\'' => {
                        if at(i + 1) != 0 && !c_isspace(at(i + 1)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    0 => return None,
                    _ => cur.push(c),
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        if c != 0 {
                            i += 1;
                        }
                        break;
                    }
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    _ => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(line: &[u8]) -> Option<Vec<Vec<u8>>> {
        split_args(line)
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(
            s(b"set k \"a\\x41\\n\" 'it\\'s'").unwrap(),
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"aA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert_eq!(s(b"\"\\xZZ\"").unwrap(), vec![b"xZZ".to_vec()]);
        assert_eq!(s(b"\"a\\\"b\"").unwrap(), vec![b"a\"b".to_vec()]);
        assert_eq!(s(b"'a\\nb'").unwrap(), vec![b"a\\nb".to_vec()]);
        assert_eq!(s(b"\"\"").unwrap(), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn unbalanced_or_glued_quotes_are_refused() {
        assert!(s(b"\"abc").is_none());
        assert!(s(b"'abc").is_none());
        assert!(s(b"\"a\"b").is_none());
        assert!(s(b"'a'b").is_none());
        assert!(s(b"\"a\\").is_none());
        // A closing quote followed by a vertical tab is fine: C's isspace includes it.
        assert_eq!(
            s(b"\"a\"\x0bb").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn separators_are_c_isspace_between_tokens_but_only_four_inside_one() {
        assert_eq!(s(b"\x0b\x0cPING").unwrap(), vec![b"PING".to_vec()]);
        assert_eq!(s(b"a\x0bb").unwrap(), vec![b"a\x0bb".to_vec()]);
        assert_eq!(
            s(b"a\rb\tc").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(s(b"a\"b c\"").unwrap(), vec![b"ab c".to_vec()]);
    }

    #[test]
    fn nul_ends_the_line() {
        assert_eq!(
            s(b"PING a\0b").unwrap(),
            vec![b"PING".to_vec(), b"a".to_vec()]
        );
        assert_eq!(s(b"\0").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(s(b"   ").unwrap(), Vec::<Vec<u8>>::new());
    }
}
