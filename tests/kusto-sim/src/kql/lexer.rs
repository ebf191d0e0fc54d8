//! Tokenizer shared by KQL queries and management commands.
//!
//! Tokens carry their byte span so that command parsers can take raw text (CSV after `<|`,
//! unquoted GUID lists) from the source, as Kusto does.

use super::KqlError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    /// A string literal. `hidden` marks `h'...'` literals, whose text must never be logged.
    Str { value: String, hidden: bool },
    Int(i64),
    Real(f64),
    /// `1d`, `30m`, `100ms`: already in ticks.
    Timespan(i64),
    /// `datetime(...)`, `timespan(...)`, `guid(...)`, `dynamic(...)`, `long(...)` and friends:
    /// KQL reads their argument as raw literal text, not as an expression.
    TypedLiteral { ty: String, text: String },
    Punct(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

const PUNCTS: [&str; 27] = [
    "<|", "==", "!=", "<>", "<=", ">=", "=~", "!~", "..", "=>", "|", "(", ")", "[", "]", "{", "}", ",", ";", ":", "=", "<",
    ">", "+", "-", "*", "/",
];
const MORE_PUNCTS: [&str; 4] = ["%", ".", "!", "@"];

/// Type names whose parenthesised argument is literal text (`datetime(2024-01-01 10:00)`).
const LITERAL_TYPES: [&str; 12] = [
    "datetime", "timespan", "time", "guid", "dynamic", "bool", "boolean", "int", "long", "real", "double", "decimal",
];

pub fn tokenize(src: &str) -> Result<Vec<Token>, KqlError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments run to the end of the line.
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        // Multi-line string literal: ```...```
        if src[i..].starts_with("```") {
            let body_start = i + 3;
            let end = src[body_start..]
                .find("```")
                .ok_or_else(|| KqlError::syntax(start, "unterminated ``` string literal"))?;
            out.push(Token {
                tok: Tok::Str { value: src[body_start..body_start + end].to_string(), hidden: false },
                start,
                end: body_start + end + 3,
            });
            i = body_start + end + 3;
            continue;
        }
        // String literals, with h (hidden) and @ (verbatim) prefixes.
        let (hidden, verbatim, quote_at) = match c {
            b'h' | b'H' if matches!(bytes.get(i + 1), Some(b'\'') | Some(b'"')) => (true, false, i + 1),
            b'h' | b'H' if bytes.get(i + 1) == Some(&b'@') && matches!(bytes.get(i + 2), Some(b'\'') | Some(b'"')) => {
                (true, true, i + 2)
            }
            b'@' if matches!(bytes.get(i + 1), Some(b'\'') | Some(b'"')) => (false, true, i + 1),
            b'\'' | b'"' => (false, false, i),
            _ => (false, false, usize::MAX),
        };
        if quote_at != usize::MAX {
            let (value, next) = read_string(src, quote_at, verbatim)?;
            out.push(Token { tok: Tok::Str { value, hidden }, start, end: next });
            i = next;
            continue;
        }
        if c.is_ascii_digit() {
            let (tok, next) = read_number(src, i)?;
            out.push(Token { tok, start, end: next });
            i = next;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'$') {
                j += 1;
            }
            let word = &src[i..j];
            // datetime(...) and friends: the argument is literal text.
            let mut k = j;
            while k < bytes.len() && bytes[k] == b' ' {
                k += 1;
            }
            if bytes.get(k) == Some(&b'(') && LITERAL_TYPES.contains(&word.to_ascii_lowercase().as_str()) {
                let (text, next) = read_balanced(src, k)?;
                out.push(Token { tok: Tok::TypedLiteral { ty: word.to_ascii_lowercase(), text }, start, end: next });
                i = next;
                continue;
            }
            out.push(Token { tok: Tok::Ident(word.to_string()), start, end: j });
            i = j;
            continue;
        }
        let p = PUNCTS
            .iter()
            .chain(MORE_PUNCTS.iter())
            .find(|p| src[i..].starts_with(**p))
            .ok_or_else(|| KqlError::syntax(i, format!("unexpected character '{}'", src[i..].chars().next().unwrap())))?;
        out.push(Token { tok: Tok::Punct(p), start, end: i + p.len() });
        i += p.len();
    }
    out.push(Token { tok: Tok::Eof, start: src.len(), end: src.len() });
    Ok(out)
}

fn read_string(src: &str, quote_at: usize, verbatim: bool) -> Result<(String, usize), KqlError> {
    let bytes = src.as_bytes();
    let quote = bytes[quote_at];
    let mut value = String::new();
    let mut j = quote_at + 1;
    loop {
        let Some(&b) = bytes.get(j) else {
            return Err(KqlError::syntax(quote_at, "unterminated string literal"));
        };
        if b == quote {
            // In verbatim strings a doubled quote stands for one quote.
            if verbatim && bytes.get(j + 1) == Some(&quote) {
                value.push(quote as char);
                j += 2;
                continue;
            }
            return Ok((value, j + 1));
        }
        if b == b'\n' {
            return Err(KqlError::syntax(quote_at, "unterminated string literal"));
        }
        if b == b'\\' && !verbatim {
            let e = *bytes.get(j + 1).ok_or_else(|| KqlError::syntax(j, "unterminated string literal"))?;
            value.push(match e {
                b'n' => '\n',
                b't' => '\t',
                b'r' => '\r',
                b'\\' => '\\',
                b'\'' => '\'',
                b'"' => '"',
                b'0' => '\0',
                _ => return Err(KqlError::syntax(j, format!("unknown escape sequence '\\{}'", e as char))),
            });
            j += 2;
            continue;
        }
        let ch = src[j..].chars().next().unwrap();
        value.push(ch);
        j += ch.len_utf8();
    }
}

fn read_number(src: &str, i: usize) -> Result<(Tok, usize), KqlError> {
    let bytes = src.as_bytes();
    let mut j = i;
    let mut is_real = false;
    if src[i..].starts_with("0x") || src[i..].starts_with("0X") {
        j += 2;
        while j < bytes.len() && bytes[j].is_ascii_hexdigit() {
            j += 1;
        }
        let v = i64::from_str_radix(&src[i + 2..j], 16).map_err(|_| KqlError::syntax(i, "bad hex literal"))?;
        return Ok((Tok::Int(v), j));
    }
    while j < bytes.len() && bytes[j].is_ascii_digit() {
        j += 1;
    }
    if j < bytes.len() && bytes[j] == b'.' && bytes.get(j + 1).is_some_and(|b| b.is_ascii_digit()) {
        is_real = true;
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < bytes.len() && (bytes[j] == b'e' || bytes[j] == b'E') {
        let mut k = j + 1;
        if k < bytes.len() && (bytes[k] == b'+' || bytes[k] == b'-') {
            k += 1;
        }
        if k < bytes.len() && bytes[k].is_ascii_digit() {
            is_real = true;
            while k < bytes.len() && bytes[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    let number = &src[i..j];
    // A unit suffix makes a timespan literal (1d, 30m, 1.5h, 100ms, 10microseconds).
    let mut k = j;
    while k < bytes.len() && bytes[k].is_ascii_alphabetic() {
        k += 1;
    }
    if k > j {
        let unit = &src[j..k];
        let Some(per) = crate::model::value::timespan_unit_ticks(unit) else {
            // Not a literal (e.g. a GUID segment such as `3ac47f35`): hand the whole word to
            // the parser, which refuses it where an expression is expected.
            while k < bytes.len() && (bytes[k].is_ascii_alphanumeric() || bytes[k] == b'_') {
                k += 1;
            }
            return Ok((Tok::Ident(src[i..k].to_string()), k));
        };
        let n: f64 = number.parse().map_err(|_| KqlError::syntax(i, "bad number"))?;
        return Ok((Tok::Timespan((n * per as f64).round() as i64), k));
    }
    if is_real {
        Ok((Tok::Real(number.parse().map_err(|_| KqlError::syntax(i, "bad real literal"))?), j))
    } else {
        match number.parse::<i64>() {
            Ok(v) => Ok((Tok::Int(v), j)),
            Err(_) => Ok((Tok::Real(number.parse().map_err(|_| KqlError::syntax(i, "bad number"))?), j)),
        }
    }
}

/// Reads `( ... )` starting at the opening parenthesis; returns the inner text, trimmed, and
/// strips one level of quotes (`datetime("2024-01-01")`).
fn read_balanced(src: &str, open: usize) -> Result<(String, usize), KqlError> {
    let bytes = src.as_bytes();
    let mut depth = 0;
    let mut j = open;
    let mut in_str: Option<u8> = None;
    while j < bytes.len() {
        let b = bytes[j];
        match in_str {
            Some(q) => {
                if b == b'\\' {
                    j += 1;
                } else if b == q {
                    in_str = None;
                }
            }
            None => match b {
                b'\'' | b'"' => in_str = Some(b),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        let inner = src[open + 1..j].trim();
                        let unquoted = if inner.len() >= 2
                            && ((inner.starts_with('\'') && inner.ends_with('\''))
                                || (inner.starts_with('"') && inner.ends_with('"')))
                            && !inner.starts_with("{")
                        {
                            inner[1..inner.len() - 1].to_string()
                        } else {
                            inner.to_string()
                        };
                        return Ok((unquoted, j + 1));
                    }
                }
                _ => {}
            },
        }
        j += 1;
    }
    Err(KqlError::syntax(open, "unbalanced parentheses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn strings_numbers_and_operators() {
        assert_eq!(
            toks("T | where a >= 1.5 and b != 'x\\'y' or c =~ @'c:\\d'"),
            vec![
                Tok::Ident("T".into()),
                Tok::Punct("|"),
                Tok::Ident("where".into()),
                Tok::Ident("a".into()),
                Tok::Punct(">="),
                Tok::Real(1.5),
                Tok::Ident("and".into()),
                Tok::Ident("b".into()),
                Tok::Punct("!="),
                Tok::Str { value: "x'y".into(), hidden: false },
                Tok::Ident("or".into()),
                Tok::Ident("c".into()),
                Tok::Punct("=~"),
                Tok::Str { value: "c:\\d".into(), hidden: false },
                Tok::Eof
            ]
        );
    }

    #[test]
    fn typed_literals_and_timespans() {
        assert_eq!(
            toks("datetime(2024-01-01 10:00) + 1h"),
            vec![
                Tok::TypedLiteral { ty: "datetime".into(), text: "2024-01-01 10:00".into() },
                Tok::Punct("+"),
                Tok::Timespan(crate::model::value::TICKS_PER_HOUR),
                Tok::Eof
            ]
        );
        assert_eq!(toks("dynamic({\"a\": [1]})")[0], Tok::TypedLiteral { ty: "dynamic".into(), text: "{\"a\": [1]}".into() });
    }

    #[test]
    fn hidden_strings_are_marked() {
        assert_eq!(toks("h'https://x?sig=1'")[0], Tok::Str { value: "https://x?sig=1".into(), hidden: true });
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert!(tokenize("'open").is_err());
        assert_eq!(tokenize("3ac47f35").unwrap()[0].tok, Tok::Ident("3ac47f35".into()));
        assert!(tokenize("T # x").is_err());
    }
}
