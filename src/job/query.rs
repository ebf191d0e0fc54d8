//! The user's query is a row filter and a projection, nothing else.
//!
//! A copy applies the query to each block's rows separately (`T | where <block's ingestion
//! range> | <query>`), so the query must give, block by block, exactly the rows it would give
//! on the whole window. That holds for row-local operators over deterministic row-local
//! functions, and for nothing else: `take`, `summarize`, `distinct`, `top` change which rows a
//! block sees; `union`, `join`, `lookup`, `cluster()`, `database()`, `table()`, `toscalar()`,
//! `externaldata`, `evaluate`, `invoke` read other data (and other clusters, with the app's
//! rights); `now()`, `ago()`, `rand()`, `new_guid()`, `prev()`, `row_number()` depend on the
//! time or on row order. So the query is checked on its tokens against allow-lists:
//!
//! - after every `|` (outside brackets) one of the [`OPERATORS`];
//! - an identifier followed by `(` is one of the [`FUNCTIONS`] (documented, deterministic,
//!   row-local, and implemented by the simulator, so that the property test below can prove
//!   them), or a typed literal (`datetime(…)`, `dynamic(…)`, …), read as literal text;
//! - the [`KEYWORDS`] of expressions; any other bare identifier is a column.
//!
//! Columns are not known when a request is validated (the source table is not read then), so
//! bare identifiers are collected in [`CheckedQuery::columns_read`] and must be checked
//! against the source schema at planning with [`CheckedQuery::check_columns`]: a bare name that
//! is no column could be a stored function or a table (`where Id in (Other)`).
//!
//! The property ("block by block equals the whole window") is tested with proptest against the
//! simulator's evaluator in `tests/query_checker.rs`, over pipelines of the accepted operators
//! and functions and over token soup. Member access on a dynamic value (`Props.key`) is
//! accepted as row-local by its definition; the simulator does not evaluate it, so that one
//! rests on the documentation alone.

use std::collections::BTreeSet;

/// Row-local operators.
pub const OPERATORS: [&str; 6] = ["where", "filter", "project", "project-away", "project-rename", "extend"];

/// Documented, deterministic, row-local scalar functions the simulator implements.
pub const FUNCTIONS: [&str; 30] = [
    "abs", "array_length", "bin", "floor", "iff", "iif", "isempty", "isnotempty", "isnotnull", "isnull", "not",
    "parse_json", "set_has_element", "strcat", "strlen", "tobool", "toboolean", "todatetime", "todecimal", "todouble",
    "todynamic", "toguid", "toint", "toint64", "tolong", "tolower", "toreal", "tostring", "totimespan", "toupper",
];

/// Type names whose parenthesised argument is literal text.
const TYPED_LITERALS: [&str; 12] =
    ["datetime", "timespan", "time", "guid", "dynamic", "bool", "boolean", "int", "long", "real", "double", "decimal"];

/// Words of the expression grammar (string and set operators, literals).
pub const KEYWORDS: [&str; 17] = [
    "and", "or", "in", "in~", "between", "has", "has_cs", "contains", "contains_cs", "startswith", "startswith_cs",
    "endswith", "endswith_cs", "hasprefix", "hassuffix", "true", "false",
];

/// Why some names are refused, so the reason says more than "not allowed".
fn why_refused(name: &str, operator: bool) -> &'static str {
    match name {
        "take" | "limit" | "top" | "sample" | "sample-distinct" | "summarize" | "distinct" | "count" | "top-nested"
        | "top-hitters" | "serialize" | "sort" | "order" | "reduce" | "make-series" | "as" | "partition" | "fork"
        | "facet" | "scan" | "mv-expand" | "mv-apply" | "parse" | "parse-where" => {
            "it changes which rows a block sees, so a copy made block by block would differ from the table"
        }
        "union" | "join" | "lookup" | "evaluate" | "invoke" | "externaldata" | "materialize" | "cluster" | "database"
        | "table" | "toscalar" | "find" | "search" | "getschema" | "range" | "print" | "datatable" | "external_table"
        | "materialized_view" | "entity_group" => "it reads data other than the source table's rows",
        "now" | "ago" | "rand" | "new_guid" | "prev" | "next" | "row_number" | "row_cumsum" | "row_window_session"
        | "current_principal" | "current_cluster_endpoint" | "current_database" | "cursor_current" | "cursor_after"
        | "cursor_before_or_at" | "ingestion_time" | "extent_id" | "extent_tags" | "hash_rows" | "unixtime_now" => {
            "its value depends on the time, the row order or the extents, not on the row alone"
        }
        "let" | "declare" | "set" | "alias" | "pattern" | "restrict" => "only a pipeline of row operators is accepted",
        _ if operator => "it is not one of the row operators where, filter, project, project-away, project-rename, extend",
        _ => "it is not one of the documented deterministic row-local functions accepted",
    }
}

/// A query that passed the checks, and the bare names it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedQuery {
    /// Bare identifiers read as columns (source columns, or columns the query defines).
    pub columns_read: BTreeSet<String>,
    /// Names the query defines (`extend x = …`, `project x = …`, `project-rename x = …`).
    pub columns_defined: BTreeSet<String>,
}

impl CheckedQuery {
    /// At planning, once the source columns are known: every bare name must be one of them
    /// or one the query defines.
    pub fn check_columns(&self, source_columns: &[String]) -> Result<(), String> {
        let unknown: Vec<&str> = self
            .columns_read
            .iter()
            .filter(|c| !self.columns_defined.contains(*c) && !source_columns.iter().any(|s| s == *c))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "query refused: {} {} not a column of the source table (a bare name that is no column could be a table or a stored function)",
                unknown.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(", "),
                if unknown.len() == 1 { "is" } else { "are" }
            ))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    /// `['name']` or `["name"]`: a column name.
    Quoted(String),
    Literal,
    Punct(&'static str),
}

const PUNCTS: [&str; 22] = [
    "==", "!=", "<>", "<=", ">=", "=~", "!~", "|", "(", ")", "[", "]", ",", "=", "<", ">", "+", "-", "*", "/", "%", ".",
];

/// Checks a query (a pipeline tail starting with `|`). The reason names what was refused.
pub fn check(query: &str) -> Result<CheckedQuery, String> {
    // Quoting first: no `;`, no `<|`, literals closed, brackets balanced.
    crate::kusto::UserQuery::new(query).map_err(|e| e.message)?;
    let tokens = lex(query)?;
    let mut out = CheckedQuery { columns_read: BTreeSet::new(), columns_defined: BTreeSet::new() };
    let mut depth = 0usize;
    let mut i = 0;
    let mut operator = String::new();
    if tokens.first() != Some(&Tok::Punct("|")) {
        return Err("query refused: it must start with '|'".into());
    }
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Punct("|") if depth == 0 => {
                let Some(Tok::Word(op)) = tokens.get(i + 1) else {
                    return Err("query refused: '|' must be followed by an operator".into());
                };
                if !OPERATORS.contains(&op.as_str()) {
                    return Err(format!("query refused: operator '{op}' is not accepted: {}", why_refused(op, true)));
                }
                operator = op.clone();
                i += 2;
                continue;
            }
            Tok::Punct("|") => {
                return Err("query refused: '|' inside brackets is a subquery, which reads data other than the source table's rows".into())
            }
            // `a .. b` (a range of `between`), or a member of a dynamic value (`Props.key`):
            // a dot anywhere else is no expression Kusto accepts, and on a line of its own it
            // would read as the start of a management command.
            Tok::Punct(".") if tokens.get(i + 1) == Some(&Tok::Punct(".")) => {
                i += 2;
                continue;
            }
            Tok::Punct(".") => {
                let prev = i.checked_sub(1).and_then(|p| tokens.get(p));
                // The value is a name (not an operator right after '|', not a keyword), a quoted
                // name, or a bracketed expression.
                let operator_before = i >= 2 && tokens.get(i - 2) == Some(&Tok::Punct("|"));
                let member_of = match prev {
                    Some(Tok::Word(w)) => !operator_before && !KEYWORDS.contains(&w.as_str()),
                    Some(Tok::Quoted(_) | Tok::Punct(")") | Tok::Punct("]")) => true,
                    _ => false,
                };
                let member = matches!(tokens.get(i + 1), Some(Tok::Word(_) | Tok::Quoted(_)));
                if !(member_of && member) {
                    return Err("query refused: '.' must join a value and its member, as in Props.key".into());
                }
            }
            Tok::Punct("(") | Tok::Punct("[") => depth += 1,
            Tok::Punct(")") | Tok::Punct("]") => depth = depth.saturating_sub(1),
            Tok::Word(w) => {
                let next = tokens.get(i + 1);
                let prev = i.checked_sub(1).and_then(|p| tokens.get(p));
                if KEYWORDS.contains(&w.as_str()) {
                    // A keyword (`in (…)`, `between (…)`).
                } else if next == Some(&Tok::Punct("(")) {
                    if !FUNCTIONS.contains(&w.as_str()) {
                        return Err(format!("query refused: function '{w}' is not accepted: {}", why_refused(w, false)));
                    }
                } else if prev == Some(&Tok::Punct(".")) || KEYWORDS.contains(&w.as_str()) {
                    // A member of a dynamic value (`Props.key`), or a keyword.
                } else if why_refused(w, true) != why_refused("", true) || why_refused(w, false) != why_refused("", false) {
                    // `externaldata`, `materialize` and friends need no parentheses to be harmful.
                    return Err(format!("query refused: '{w}' is not accepted: {}", why_refused(w, false)));
                } else {
                    record_name(&mut out, &operator, w, next, prev, depth);
                }
            }
            Tok::Quoted(name) => {
                let (next, prev) = (tokens.get(i + 1), i.checked_sub(1).and_then(|p| tokens.get(p)));
                record_name(&mut out, &operator, name, next, prev, depth);
            }
            _ => {}
        }
        i += 1;
    }
    Ok(out)
}

/// A column name: defined when it is the left side of `=` in a projection or extension.
fn record_name(out: &mut CheckedQuery, operator: &str, name: &str, next: Option<&Tok>, prev: Option<&Tok>, depth: usize) {
    let defines = depth == 0
        && next == Some(&Tok::Punct("="))
        && matches!(operator, "extend" | "project" | "project-rename")
        && matches!(prev, Some(Tok::Punct(",")) | Some(Tok::Word(_)) | None);
    if defines {
        out.columns_defined.insert(name.to_owned());
    } else {
        out.columns_read.insert(name.to_owned());
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out: Vec<Tok> = Vec::new();
    let mut i = 0;
    let refuse = |what: String| Err(format!("query refused: {what}"));
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '`' {
            // ```multi-line literal```: closed (checked by UserQuery).
            let body = i + 3;
            let end = (body..chars.len()).find(|&j| chars[j..].starts_with(&['`', '`', '`'])).ok_or("query refused: an unterminated ``` literal")?;
            i = end + 3;
            out.push(Tok::Literal);
            continue;
        }
        // String literals, with the obfuscated (h / H) and verbatim (@) prefixes.
        let mut j = i;
        if matches!(chars[j], 'h' | 'H') && matches!(chars.get(j + 1), Some('\'' | '"' | '@')) {
            j += 1;
        }
        let verbatim = chars.get(j) == Some(&'@') && matches!(chars.get(j + 1), Some('\'' | '"'));
        if verbatim {
            j += 1;
        }
        if matches!(chars.get(j), Some('\'' | '"')) && (j > i || matches!(c, '\'' | '"')) {
            let (end, value) = string_end(&chars, j, verbatim).ok_or("query refused: an unterminated string literal")?;
            i = end;
            // `['name']` is a column name unless it indexes the value before it.
            let bracket_open = out.last() == Some(&Tok::Punct("[")) && chars.get(i) == Some(&']');
            if bracket_open && !indexes_before(&out) {
                out.pop();
                i += 1;
                out.push(Tok::Quoted(value));
            } else {
                out.push(Tok::Literal);
            }
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || (chars[i] == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))) {
                i += 1;
            }
            out.push(Tok::Literal);
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let mut word: String = chars[start..i].iter().collect();
            // Hyphenated operator names (`project-away`) right after a pipe.
            if out.last() == Some(&Tok::Punct("|")) {
                while chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| c.is_alphabetic()) {
                    let s = i + 1;
                    i = s;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    word = format!("{word}-{}", chars[s..i].iter().collect::<String>());
                }
            }
            if word == "in" && chars.get(i) == Some(&'~') {
                i += 1;
                word.push('~');
            }
            let typed = TYPED_LITERALS.contains(&word.to_ascii_lowercase().as_str());
            let after = (i..chars.len()).find(|&k| !chars[k].is_whitespace());
            if typed && after.is_some_and(|k| chars[k] == '(') {
                // Literal text up to the matching ')', strings and nested brackets included.
                i = literal_end(&chars, after.unwrap_or(i)).ok_or("query refused: an unterminated typed literal")?;
                out.push(Tok::Literal);
                continue;
            }
            out.push(Tok::Word(word));
            continue;
        }
        if c == '!' {
            // `!in`, `!has`, `!contains`, …: the negation binds to the next keyword.
            i += 1;
            if chars.get(i).is_some_and(|c| c.is_alphabetic()) {
                continue;
            }
            if matches!(chars.get(i), Some('=' | '~')) {
                i += 1;
                out.push(Tok::Punct("!="));
                continue;
            }
            return refuse("'!' must negate an operator like !has or !=".into());
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            Some(p) => {
                i += p.chars().count();
                out.push(Tok::Punct(p));
            }
            None => return refuse(format!("'{c}' is not part of the row filters and projections accepted")),
        }
    }
    Ok(out)
}

/// Whether the `[` at the end of `out` indexes the value before it (`Props['k']`).
fn indexes_before(out: &[Tok]) -> bool {
    out.len() >= 2 && matches!(out[out.len() - 2], Tok::Word(_) | Tok::Quoted(_) | Tok::Punct(")") | Tok::Punct("]"))
}

/// The end (exclusive) of a string literal whose quote is at `at`, and its value.
fn string_end(chars: &[char], at: usize, verbatim: bool) -> Option<(usize, String)> {
    let q = chars[at];
    let mut i = at + 1;
    let mut value = String::new();
    loop {
        let c = *chars.get(i)?;
        if c == '\n' {
            return None;
        }
        if c == '\\' && !verbatim {
            value.push(*chars.get(i + 1)?);
            i += 2;
            continue;
        }
        if c == q {
            if verbatim && chars.get(i + 1) == Some(&q) {
                value.push(q);
                i += 2;
                continue;
            }
            return Some((i + 1, value));
        }
        value.push(c);
        i += 1;
    }
}

/// The end (exclusive) of `(…)` starting at `open`, skipping string literals.
fn literal_end(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            '\'' | '"' => {
                i = string_end(chars, i, false)?.0;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_filters_and_projections_are_accepted() {
        for ok in [
            "| where Level == 'Error'",
            "| filter N > 3 and Name !has 'x' or Name in~ ('a', 'b')",
            "| project Timestamp, Message, Doubled = N * 2",
            "| project-away Secret | project-rename Msg = Message",
            "| extend Day = bin(Ts, 1d), Big = iff(N > 10, true, false) | where isnotempty(Name)",
            "| where Ts between (datetime(2024-01-01) .. datetime(2024-02-01))",
            "| where Props.kind == 'a' and Props['b'] == dynamic({\"x\": [1, 2]})",
            "| where ['Odd Name'] == h'secret' // a comment with take and union",
            "| where N !in (1, 2) and tostring(N) !contains '9'",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn a_stray_dot_is_refused_and_members_and_ranges_are_not() {
        // Found by the fuzz target: a dot on a line of its own passed the checks.
        assert!(check("| where Name has\n.").unwrap_err().contains("a line starting with '.'"));
        assert!(check("| where I\n.d in (1)").is_err());
        assert!(check("| where . == 1").is_err());
        assert!(check("| where\n. Region projectdeon").is_err());
        assert!(check("| where T between (datetime(\n.2024-01-01) .. datetime(2024-02-01))").is_err());
        assert!(check("| where Props.key == 1 and Props['a'].b == 2").is_ok());
        assert!(check("| where When between (datetime(2024-01-01) .. datetime(2024-02-01))").is_ok());
    }

    #[test]
    fn everything_else_is_refused_with_its_name() {
        for (bad, needle) in [
            ("| union Other", "operator 'union'"),
            ("| join kind=inner (Other) on Id", "operator 'join'"),
            ("| lookup Other on Id", "operator 'lookup'"),
            ("| take 10", "operator 'take'"),
            ("| limit 10", "operator 'limit'"),
            ("| top 10 by N", "operator 'top'"),
            ("| sample 10", "operator 'sample'"),
            ("| summarize count() by Name", "operator 'summarize'"),
            ("| distinct Name", "operator 'distinct'"),
            ("| count", "operator 'count'"),
            ("| serialize", "operator 'serialize'"),
            ("| evaluate bag_unpack(P)", "operator 'evaluate'"),
            ("| invoke MyFunction()", "operator 'invoke'"),
            ("| where Id in (materialize(Other))", "function 'materialize'"),
            ("| where Id in (externaldata [h'https://x'] with (format='csv'))", "'externaldata'"),
            ("| where Id in (cluster('other').database('db').T | project Id)", "function 'cluster'"),
            ("| where x == toscalar(Other | count)", "function 'toscalar'"),
            ("| where Id in (Other | project Id)", "subquery"),
            ("| where Ts > now()", "function 'now'"),
            ("| where Ts > ago(1d)", "function 'ago'"),
            ("| extend r = rand()", "function 'rand'"),
            ("| extend g = new_guid()", "function 'new_guid'"),
            ("| extend p = prev(N)", "function 'prev'"),
            ("| extend n = next(N)", "function 'next'"),
            ("| extend r = row_number()", "function 'row_number'"),
            ("| extend x = MyStoredFunction(N)", "function 'MyStoredFunction'"),
            ("| where table('Other').Id == 1", "function 'table'"),
            ("| where database('d').T.x == 1", "function 'database'"),
            ("| let x = 1", "operator 'let'"),
            ("| where a == 1; T", "';'"),
            ("| where a == 1 <| .show tables", "'<|'"),
            ("where a == 1", "must start with '|'"),
            ("| where a == $left.b", "'$'"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn bare_names_are_columns_checked_at_planning() {
        let q = check("| extend Day = bin(Ts, 1d) | where Day > datetime(2024-01-01) and Name in (Other) | project-rename N2 = N").unwrap();
        assert!(q.columns_defined.contains("Day") && q.columns_defined.contains("N2"));
        let cols: Vec<String> = ["Ts", "Name", "N"].map(String::from).to_vec();
        let err = q.check_columns(&cols).unwrap_err();
        assert!(err.contains("'Other'") && !err.contains("'Day'"), "{err}");
        check("| where Name == 'a'").unwrap().check_columns(&cols).unwrap();
    }
}
