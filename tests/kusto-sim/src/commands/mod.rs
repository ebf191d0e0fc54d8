//! Management commands: parse, then run against the cluster state.
//!
//! Synchronous commands run under the state lock and answer their result table. Async
//! commands answer an `OperationId` at once and do their work when their configured duration
//! has passed, recording the outcome in the operations log.

pub mod data;
pub mod parse;
pub mod schema;
pub mod show;
pub mod storage;

use std::sync::{Arc, Mutex};


use crate::faults::{CommandKind, Fault};
use crate::kql::eval::{Frame, Row};
use crate::model::cluster::{cols, ClusterState};
use crate::model::value::{ScalarType, Value};
use crate::wire::error::KustoError;
use parse::{parse_command, Command};

pub type Shared = Arc<Mutex<ClusterState>>;

pub fn lock(state: &Shared) -> std::sync::MutexGuard<'_, ClusterState> {
    // A panic in another request must not wedge the simulator.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds a result table from rows of values.
pub fn frame(spec: &[(&str, ScalarType)], rows: Vec<Vec<Value>>) -> Frame {
    Frame { columns: cols(spec), rows: rows.into_iter().map(|values| Row { values, meta: None }).collect(), has_meta: false }
}

/// Runs any command, including those that read or write blob storage.
pub async fn execute_command_async(state: &Shared, db: &str, csl: &str) -> Result<Frame, KustoError> {
    let cmd = parse_command(csl)?;
    match cmd {
        Command::Export { .. } | Command::Ingest { .. } => storage::run(state, db, cmd).await,
        other => run(state, db, other, CommandKind::of(csl)),
    }
}

/// Runs a command that needs no storage I/O (everything but `.export` and `.ingest` from
/// blobs, which need [`execute_command_async`]).
pub fn execute_command(state: &Shared, db: &str, csl: &str) -> Result<Frame, KustoError> {
    let cmd = parse_command(csl)?;
    // Background work Kusto does between commands.
    lock(state).apply_tag_retention();
    let kind = CommandKind::of(csl);
    run(state, db, cmd, kind)
}

fn run(state: &Shared, db: &str, cmd: Command, kind: CommandKind) -> Result<Frame, KustoError> {
    match cmd {
        Command::ShowTables
        | Command::ShowDatabases
        | Command::ShowTableDetails(_)
        | Command::ShowTableSchema(_)
        | Command::ShowTableExtents { .. }
        | Command::ShowTablePolicy { .. }
        | Command::ShowDatabasePolicy { .. }
        | Command::ShowAllTablesPolicy { .. }
        | Command::ShowMaterializedViews
        | Command::ShowCluster
        | Command::ShowCapacity
        | Command::ShowOperations(_)
        | Command::ShowOperationDetails(_) => show::run(&mut lock(state), db, cmd),
        Command::CreateTable { .. }
        | Command::CreateTableBasedOn { .. }
        | Command::DropTable { .. }
        | Command::AlterPolicy { .. }
        | Command::DeletePolicy { .. } => schema::run(&mut lock(state), db, cmd),
        Command::ExecuteScript { props, commands } => {
            let continue_on_errors = props.get("continueonerrors").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let mut rows = Vec::new();
            let mut failed = false;
            for text in commands {
                let command_type = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                let (result, reason) = if failed && !continue_on_errors {
                    ("Skipped".to_string(), String::new())
                } else {
                    match execute_command(state, db, &text) {
                        Ok(_) => ("Completed".to_string(), String::new()),
                        Err(e) => {
                            failed = true;
                            ("Failed".to_string(), e.detail)
                        }
                    }
                };
                rows.push(vec![
                    Value::Guid(crate::ids::new_uuid()),
                    Value::String(command_type),
                    Value::String(redact(&text)),
                    Value::String(result),
                    Value::String(reason),
                ]);
            }
            Ok(frame(
                &[
                    ("OperationId", ScalarType::Guid),
                    ("CommandType", ScalarType::String),
                    ("CommandText", ScalarType::String),
                    ("Result", ScalarType::String),
                    ("Reason", ScalarType::String),
                ],
                rows,
            ))
        }
        Command::Export { .. } | Command::Ingest { .. } => Err(KustoError::bad_request(
            "kusto-sim: .export and .ingest from storage run only through the async entry point (HTTP, or Cluster::command_async)",
        )),
        other => data::run(state, db, other, kind),
    }
}

/// Runs `work` now (sync) or later as an operation (async), applying the operation-level
/// faults drawn for this command.
pub fn run_maybe_async(
    state: &Shared,
    db: &str,
    operation: &str,
    kind: CommandKind,
    is_async: bool,
    work: impl FnOnce(&mut ClusterState, &[Fault]) -> Result<Frame, KustoError> + Send + 'static,
) -> Result<Frame, KustoError> {
    let mut s = lock(state);
    let faults = s.faults.take(kind, false);
    if !is_async {
        return work(&mut s, &faults);
    }
    let now = s.now();
    let id = s.operations.start(operation, db, now);
    let mut delay = s.next_duration(kind);
    for f in &faults {
        if let Fault::Slow(d) = f {
            delay += *d;
        }
    }
    drop(s);
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut s = lock(&state);
        let outcome = work(&mut s, &faults);
        let now = s.now();
        s.operations.finish(id, now, outcome.map_err(|e| (e.detail, !e.permanent)));
        if faults.contains(&Fault::ExpireOperation) {
            s.operations.remove(id);
        }
    });
    Ok(frame(&[("OperationId", ScalarType::Guid)], vec![vec![Value::Guid(id)]]))
}

/// Hides the secrets of `h'...'` literals (SAS tokens) in text that may be shown or logged:
/// the URL path stays, the query (or `;key`) goes.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_hidden_literal(rest) {
        let quote = rest[i + 1..].chars().next().unwrap_or('\'');
        out.push_str(&rest[..i]);
        let body = &rest[i + 2..];
        match body.find(quote) {
            Some(end) => {
                let inner = &body[..end];
                let shown = inner.split(['?', ';']).next().unwrap_or("");
                out.push_str(&format!("h{quote}{shown}?***{quote}"));
                rest = &body[end + 1..];
            }
            None => {
                // An unterminated hidden literal: hide everything after it.
                out.push_str("h***");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The byte offset of the next `h'` or `h"` that starts a literal (not the end of a word).
fn find_hidden_literal(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1)).find(|&i| {
        matches!(bytes[i], b'h' | b'H')
            && matches!(bytes[i + 1], b'\'' | b'"')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_sas_tokens() {
        let r = redact(".ingest into table T (h'https://a/b/c.parquet?sv=1&sig=SECRET') with (x='y')");
        assert!(!r.contains("SECRET"), "{r}");
        assert!(r.contains("https://a/b/c.parquet?***"), "{r}");
        assert!(r.contains("with (x='y')"));
        let r = redact("é h\"https://a/ü?sig=S\", h'open?sig=S");
        assert!(!r.contains("sig=S") && r.starts_with("é h\"https://a/ü?***\""), "{r}");
        assert_eq!(redact("match h'x' with('y')"), "match h'x?***' with('y')");
    }
}
