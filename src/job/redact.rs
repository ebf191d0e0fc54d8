//! User text quoted in a reason, a record or a log never carries a secret: URL query strings
//! (a SAS), `sig=` values and `h'…'` literals (Kusto's own marker for secret text) are
//! replaced by `<redacted>` before the text is kept or shown.

/// The text with query strings, `sig=` values and obfuscated literals redacted.
pub fn redact(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let stop = |c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | ')' | ']' | '}' | ',' | '>');
    while i < chars.len() {
        let c = chars[i];
        // h'…', H"…", h@'…': the whole literal.
        if matches!(c, 'h' | 'H') && !chars.get(i.wrapping_sub(1)).is_some_and(|p| p.is_alphanumeric() || *p == '_') {
            let mut j = i + 1;
            if chars.get(j) == Some(&'@') {
                j += 1;
            }
            if let Some(&q) = chars.get(j).filter(|q| matches!(q, '\'' | '"')) {
                let end = (j + 1..chars.len()).find(|&k| chars[k] == q && chars[k - 1] != '\\').map_or(chars.len(), |k| k + 1);
                out.push_str(&format!("{c}{q}<redacted>{q}"));
                i = end;
                continue;
            }
        }
        // A query string after a URL path, or a bare sig= anywhere.
        let sig = chars[i..].iter().take(4).collect::<String>().eq_ignore_ascii_case("sig=");
        if (c == '?' && i > 0 && !chars[i - 1].is_whitespace()) || sig {
            out.push_str(if sig { "sig=<redacted>" } else { "?<redacted>" });
            i += if sig { 4 } else { 1 };
            while i < chars.len() && !stop(chars[i]) {
                i += 1;
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("stagingDirectory: 'https://a.blob.core.windows.net/c?sv=2024&sig=abc%2B' must not carry a query string"),
            "stagingDirectory: 'https://a.blob.core.windows.net/c?<redacted>' must not carry a query string"
        );
        assert_eq!(redact("where x == h'https://k/?sig=s3cret' and y == H\"pw\""), "where x == h'<redacted>' and y == H\"<redacted>\"");
        assert_eq!(redact("token sig=AbC/+= end"), "token sig=<redacted> end");
        assert_eq!(redact("is this a question ? yes; hash('x')"), "is this a question ? yes; hash('x')");
        assert_eq!(redact("unterminated h'abc"), "unterminated h'<redacted>'");
    }
}
