//! Fuzz targets for everything that reads untrusted input: the request parser and validator,
//! the host's invocation payloads, Kusto's v1/v2 answers, the URI parsers and the query
//! checker. `cargo fuzz` needs a nightly toolchain, which this project does not use, so the
//! targets are proptest properties over mutations of a corpus kept in `tests/fuzz/corpus/`
//! (each file is also replayed as an ordinary test) and over arbitrary text.
//!
//! The property: every input is accepted or refused with a reason, never a panic; and an
//! accepted query cannot change the structure of the command it is placed in (no second
//! statement, no management command, nothing after the pipeline it extends).
//!
//! The test command runs each target for `KC_FUZZ_SECONDS` (default 10; the five run side by
//! side), or `KC_FUZZ_CASES` cases if that comes first. The long run:
//! `KC_FUZZ_SECONDS=1800 cargo test --release --test fuzz -- --nocapture` (it prints the cases
//! run per target); a failure prints the smallest input that fails, to be added to the
//! corpus. The corpus files named `found*` are inputs earlier runs found.

use kusto_copy::handler::invocation::{queue_text, timer_info, HttpRequest, Invocation};
use kusto_copy::job::{check_request, RequestPolicy};
use kusto_copy::kusto::{commands, parse_v1, parse_v2, Ident, UserQuery};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;

fn corpus(target: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    let seeds: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no corpus for {target}");
    seeds
}

/// Pieces that tend to break parsers and checkers.
const DICTIONARY: &[&str] = &[
    "|", ";", "<|", "'", "\"", "(", ")", "[", "]", "{", "}", ",", ":", "h'", "@'", "//", "\n.", "\n", "\\", "\\\"", "union", "take",
    "where", "project", "extend", "cluster(", "database(", "toscalar(", "?sig=", "@", "%2e", "xn--", ":443", ".", "..", "null", "0",
    "-1", "1e400", "\u{2028}", "\u{0}", "💥", "\"source\"", "\"query\"", "https://", "kusto.windows.net", "blob.core.windows.net",
    "datetime(", "dynamic({", "=~", "!=", "between", "$left", "let ", "#", "\t", " ",
];

/// A corpus seed edited a few times: pieces inserted, ranges deleted, the text cut.
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((any::<u16>(), 0u8..4, 0..DICTIONARY.len(), any::<u8>()), 0..6);
    (0..seeds.len(), edits, any::<bool>()).prop_map(move |(i, edits, arbitrary_tail)| {
        let mut chars: Vec<char> = seeds[i].chars().collect();
        for (at, op, piece, len) in edits {
            let at = if chars.is_empty() { 0 } else { at as usize % (chars.len() + 1) };
            match op {
                0 | 1 => {
                    let piece: Vec<char> = DICTIONARY[piece].chars().collect();
                    chars.splice(at..at, piece);
                }
                2 => {
                    let end = (at + len as usize % 16).min(chars.len());
                    chars.drain(at..end);
                }
                _ => chars.truncate(at),
            }
        }
        let mut text: String = chars.into_iter().collect();
        if arbitrary_tail {
            text.push_str(DICTIONARY[text.len() % DICTIONARY.len()]);
        }
        text
    })
}

/// A corpus mutation or arbitrary text.
fn inputs(target: &str) -> BoxedStrategy<String> {
    prop_oneof![4 => mutated(corpus(target)), 1 => any::<String>()].boxed()
}

fn run(target: &str, property: impl Fn(&str) -> Result<(), TestCaseError>) {
    for (i, seed) in corpus(target).iter().enumerate() {
        property(seed).unwrap_or_else(|e| panic!("corpus {target} #{i}: {e}"));
    }
    // Rounds of fresh random cases until the time budget is spent (or KC_FUZZ_CASES cases).
    let budget = std::time::Duration::from_secs(std::env::var("KC_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10));
    let max_cases: u64 = std::env::var("KC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    let started = std::time::Instant::now();
    let mut ran = 0u64;
    while started.elapsed() < budget && ran < max_cases {
        let cases = 500.min(max_cases - ran) as u32;
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        if let Err(e) = runner.run(&inputs(target), |text| property(&text)) {
            panic!("{target}: {e}\n(add the minimal failing input to tests/fuzz/corpus/{target}/)");
        }
        ran += cases as u64;
    }
    eprintln!("fuzz {target}: {ran} cases in {:.1} s", started.elapsed().as_secs_f64());
}

/// The query with string literals and comments blanked, as Kusto's lexer would skip them.
fn code_only(query: &str) -> String {
    let chars: Vec<char> = query.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '`' && chars.get(i + 1) == Some(&'`') && chars.get(i + 2) == Some(&'`') {
            let body: String = chars[i + 3..].iter().collect();
            let end = body.find("```").map_or(chars.len(), |e| i + 3 + body[..e].chars().count() + 3);
            out.push_str(" S ");
            i = end;
            continue;
        }
        let verbatim = c == '@' && matches!(chars.get(i + 1), Some('\'' | '"'));
        let obfuscated = matches!(c, 'h' | 'H') && matches!(chars.get(i + 1), Some('\'' | '"'));
        if c == '\'' || c == '"' || verbatim || obfuscated {
            let open = if verbatim || obfuscated { i + 1 } else { i };
            let quote = chars[open];
            let mut j = open + 1;
            while j < chars.len() && chars[j] != quote {
                if chars[j] == '\\' && !verbatim {
                    j += 1;
                }
                j += 1;
            }
            out.push_str(" S ");
            i = j + 1;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// An accepted query placed after a table, as every command the engine builds places it:
/// still one query statement over that table.
fn keeps_its_place(query: &str) -> Result<(), TestCaseError> {
    let user = UserQuery::new(query).map_err(|e| TestCaseError::fail(format!("accepted by the checker, refused by UserQuery: {e}")))?;
    let command = commands::result_schema(&Ident::new("T").unwrap(), Some(&user));
    let code = code_only(command.expose_text());
    prop_assert!(!code.contains(';'), "a second statement: {query:?}");
    prop_assert!(!code.contains("<|"), "a command pipe: {query:?}");
    let line_starts = code.split(['\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']);
    prop_assert!(!line_starts.skip(1).any(|l| l.trim_start().starts_with('.')), "a management command: {query:?}");
    prop_assert!(code.trim_end().ends_with("| take 0"), "the engine's own tail is still last: {query:?}");
    Ok(())
}

#[test]
fn requests_are_accepted_or_refused_with_a_reason() {
    let policy = RequestPolicy { allowed_clusters: None, allowed_storage_accounts: None, loopback: false, app_client_id: None };
    run("request", |text| {
        match check_request(text, &policy) {
            Ok(spec) => {
                prop_assert!(!spec.activities.is_empty());
                for a in &spec.activities {
                    if let Some(q) = &a.query {
                        keeps_its_place(q)?;
                    }
                }
            }
            Err(reason) => prop_assert!(!reason.0.trim().is_empty(), "an empty reason for {text:?}"),
        }
        Ok(())
    });
}

#[test]
fn host_payloads_are_read_or_refused_with_a_reason() {
    run("payload", |text| {
        match Invocation::parse(text.as_bytes()) {
            Ok(invocation) => {
                for binding in ["request", "step", "timer", "req"] {
                    if let Ok(value) = invocation.binding(binding) {
                        let outcome = match binding {
                            "timer" => timer_info(value).map(|_| ()),
                            "req" => HttpRequest::parse(value).map(|_| ()),
                            _ => queue_text(value).map(|_| ()),
                        };
                        if let Err(reason) = outcome {
                            prop_assert!(!reason.is_empty());
                        }
                    }
                }
                let _ = (invocation.meta_u32("DequeueCount"), invocation.meta_string("Id"), invocation.utc_now());
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
        Ok(())
    });
}

#[test]
fn kusto_answers_are_parsed_or_refused_with_a_reason() {
    run("kusto", |text| {
        for parsed in [parse_v1(text.as_bytes()), parse_v2(text.as_bytes())] {
            match parsed {
                Ok(answer) => {
                    for table in &answer.tables {
                        prop_assert_eq!(table.rows().count(), table.len());
                    }
                }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
        Ok(())
    });
}

#[test]
fn uris_are_parsed_or_refused_with_a_reason() {
    use kusto_copy::job::uri::{parse_destination_uri, parse_staging_uri, parse_table_uri};
    run("uri", |text| {
        for outcome in [
            parse_table_uri("source", text).map(|t| t.cluster),
            parse_destination_uri("destination", text).map(|d| d.cluster),
            parse_staging_uri("stagingDirectory", text).map(|s| s.account_url),
        ] {
            match outcome {
                // Plain http only to a local emulator (the simulator serves http).
                Ok(host) => prop_assert!(
                    host.starts_with("https://") || ["http://127.", "http://localhost", "http://[::1]"].iter().any(|p| host.starts_with(p)),
                    "{text:?} gave {host}"
                ),
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
        Ok(())
    });
}

#[test]
fn queries_are_accepted_in_their_place_or_refused_with_a_reason() {
    run("query", |text| {
        match kusto_copy::job::query::check(text) {
            Ok(_) => keeps_its_place(text)?,
            Err(reason) => prop_assert!(reason.contains("refused") || !reason.is_empty()),
        }
        Ok(())
    });
}
