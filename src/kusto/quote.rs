//! Quoting of everything that goes into command text: identifiers, string literals, secrets,
//! datetimes, and the user's query. Nothing built here can end a literal early, open a new
//! statement or pipe into another command.

use std::fmt;

use time::OffsetDateTime;

use super::error::KustoError;
use super::value::format_datetime;

/// A validated entity name (table, database, column), written bracket-quoted: `['name']`.
///
/// Kusto entity names may hold letters, digits, `_`, `-`, `.` and spaces, up to 1024
/// characters; anything else is refused rather than escaped, so a name can never carry
/// KQL syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    pub fn new(name: impl Into<String>) -> Result<Ident, KustoError> {
        let name = name.into();
        if name.is_empty() || name.chars().count() > 1024 {
            return Err(KustoError::invalid_input(format!(
                "entity name must be 1 to 1024 characters, got {}",
                name.chars().count()
            )));
        }
        if name.trim() != name {
            return Err(KustoError::invalid_input(format!(
                "entity name {name:?} starts or ends with a space"
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')))
        {
            return Err(KustoError::invalid_input(format!(
                "entity name {name:?} contains {bad:?}; allowed are letters, digits, '_', '-', '.' and spaces"
            )));
        }
        Ok(Ident(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `['name']`: the validated name cannot contain a quote, so no escaping is needed.
    pub fn quoted(&self) -> String {
        format!("['{}']", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// A single-quoted KQL string literal. Backslash, quote, newline, carriage return and tab are
/// escaped; other control characters are refused (KQL documents no escape for them).
pub fn string_literal(value: &str) -> Result<String, KustoError> {
    Ok(format!("'{}'", escape_body(value)?))
}

/// An obfuscated literal `h'...'`: Kusto keeps it out of its logs and traces. Used for every
/// URL that carries a SAS.
pub fn obfuscated_literal(value: &str) -> Result<String, KustoError> {
    Ok(format!("h'{}'", escape_body(value)?))
}

fn escape_body(value: &str) -> Result<String, KustoError> {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                return Err(KustoError::invalid_input(format!(
                    "string literal contains control character U+{:04X}",
                    c as u32
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `datetime(2024-01-02T03:04:05.0000000Z)`.
pub fn datetime_literal(d: OffsetDateTime) -> String {
    format!("datetime({})", format_datetime(d))
}

/// A user's KQL that is applied to a source table, e.g. `| where Level == 'Error'`.
///
/// It is KQL on purpose, so it cannot be escaped; instead it is checked to be a pipeline tail
/// that cannot reach outside its place in our text: no statement separator (`;`), no
/// control-command pipe (`<|`), no leading `.`, balanced brackets, every string literal and
/// comment closed. The builders also put it on its own line, so a trailing `//` comment can
/// only hide the user's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserQuery(String);

impl UserQuery {
    pub fn new(text: impl Into<String>) -> Result<UserQuery, KustoError> {
        let text = text.into();
        check_user_query(&text)?;
        Ok(UserQuery(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_user_query(text: &str) -> Result<(), KustoError> {
    let refuse = |why: &str| Err(KustoError::invalid_input(format!("query refused: {why}")));
    let trimmed = text.trim_start();
    if trimmed.starts_with('.') {
        return refuse("it starts with '.', which is a management command");
    }
    let chars: Vec<char> = text.chars().collect();
    let mut stack: Vec<char> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '`' if next == Some('`') && chars.get(i + 2) == Some(&'`') => {
                // Multi-line literal ```...```.
                let body_start = i + 3;
                match find_seq(&chars, body_start, &['`', '`', '`']) {
                    Some(end) => i = end + 3,
                    None => return refuse("an unterminated ``` literal"),
                }
                continue;
            }
            '@' if matches!(next, Some('\'') | Some('"')) => {
                // Verbatim literal: the quote doubles, backslash is literal.
                let q = next.unwrap_or('"');
                i += 2;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => return refuse("an unterminated verbatim literal"),
                        Some(&ch) if ch == q => {
                            if chars.get(i + 1) == Some(&q) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
                continue;
            }
            '\'' | '"' => {
                let q = c;
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => return refuse("an unterminated string literal"),
                        Some('\\') => i += 2,
                        Some(&ch) if ch == q => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                continue;
            }
            // Any Unicode line break, then any blank: a line that starts with '.'.
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
                if chars[i + 1..].iter().find(|c| !c.is_whitespace()) == Some(&'.') =>
            {
                return refuse("a line starting with '.' would read as a management command")
            }
            ';' => return refuse("';' would start another statement"),
            '<' if next == Some('|') => return refuse("'<|' would pipe into a command"),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return refuse("unbalanced brackets");
                }
            }
            _ => {}
        }
        i += 1;
    }
    if !stack.is_empty() {
        return refuse("unbalanced brackets");
    }
    Ok(())
}

fn find_seq(chars: &[char], from: usize, seq: &[char]) -> Option<usize> {
    (from..chars.len().saturating_sub(seq.len() - 1)).find(|&i| chars[i..].starts_with(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape() {
        assert_eq!(string_literal("a'b\\c\nd").unwrap(), r"'a\'b\\c\nd'");
        assert!(string_literal("bell\u{7}").is_err());
        assert_eq!(obfuscated_literal("https://x/?sig=a").unwrap(), "h'https://x/?sig=a'");
    }
}
