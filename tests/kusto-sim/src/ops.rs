//! The operations log: what `.show operations` lists. Records age out after the retention,
//! like the real log, so a client that lost an operation id must cope.

use uuid::Uuid;

use crate::kql::eval::{Frame, Row};
use crate::model::table::Column;
use crate::model::value::{ScalarType, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    InProgress,
    Completed,
    Failed,
    PartiallySucceeded,
    Abandoned,
    BadInput,
    Throttled,
    Canceled,
}

impl OpState {
    pub fn name(self) -> &'static str {
        match self {
            OpState::InProgress => "InProgress",
            OpState::Completed => "Completed",
            OpState::Failed => "Failed",
            OpState::PartiallySucceeded => "PartiallySucceeded",
            OpState::Abandoned => "Abandoned",
            OpState::BadInput => "BadInput",
            OpState::Throttled => "Throttled",
            OpState::Canceled => "Canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != OpState::InProgress
    }
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: Uuid,
    /// Kusto's operation kind, e.g. `DataExportToFile`, `DataIngestPull`, `ExtentsMove`.
    pub operation: String,
    pub database: String,
    pub started_on: i64,
    pub last_updated_on: i64,
    pub state: OpState,
    pub status: String,
    pub should_retry: bool,
    /// What `.show operation <id> details` answers once the operation has completed.
    pub result: Option<Frame>,
}

#[derive(Debug, Clone, Default)]
pub struct OperationLog {
    pub records: Vec<Operation>,
}

impl OperationLog {
    pub fn start(&mut self, operation: &str, database: &str, now: i64) -> Uuid {
        let id = crate::ids::new_uuid();
        self.records.push(Operation {
            id,
            operation: operation.to_string(),
            database: database.to_string(),
            started_on: now,
            last_updated_on: now,
            state: OpState::InProgress,
            status: String::new(),
            should_retry: false,
            result: None,
        });
        id
    }

    pub fn finish(&mut self, id: Uuid, now: i64, outcome: Result<Frame, (String, bool)>) {
        if let Some(op) = self.records.iter_mut().find(|o| o.id == id) {
            op.last_updated_on = now;
            match outcome {
                Ok(frame) => {
                    op.state = OpState::Completed;
                    op.result = Some(frame);
                }
                Err((status, should_retry)) => {
                    op.state = OpState::Failed;
                    op.status = status;
                    op.should_retry = should_retry;
                }
            }
        }
    }

    /// Forgets records older than the retention (by last update), as Kusto's log does.
    pub fn prune(&mut self, now: i64, retention_ticks: i64) {
        self.records.retain(|o| o.last_updated_on >= now - retention_ticks);
    }

    pub fn get(&self, id: Uuid) -> Option<&Operation> {
        self.records.iter().find(|o| o.id == id)
    }

    pub fn remove(&mut self, id: Uuid) {
        self.records.retain(|o| o.id != id);
    }

    pub fn in_progress(&self, operation: &str) -> usize {
        self.records.iter().filter(|o| o.operation == operation && o.state == OpState::InProgress).count()
    }

    /// The `.show operations` table for the given ids (all when `None`).
    pub fn show(&self, ids: Option<&[Uuid]>, now: i64) -> Frame {
        let columns = vec![
            Column::new("OperationId", ScalarType::Guid),
            Column::new("Operation", ScalarType::String),
            Column::new("NodeId", ScalarType::String),
            Column::new("StartedOn", ScalarType::DateTime),
            Column::new("LastUpdatedOn", ScalarType::DateTime),
            Column::new("Duration", ScalarType::Timespan),
            Column::new("State", ScalarType::String),
            Column::new("Status", ScalarType::String),
            Column::new("RootActivityId", ScalarType::Guid),
            Column::new("ShouldRetry", ScalarType::Bool),
            Column::new("Database", ScalarType::String),
            Column::new("Principal", ScalarType::String),
            Column::new("User", ScalarType::String),
            Column::new("AdminEpochStartTime", ScalarType::DateTime),
        ];
        let rows = self
            .records
            .iter()
            .filter(|o| ids.is_none_or(|ids| ids.contains(&o.id)))
            .map(|o| {
                let end = if o.state.is_terminal() { o.last_updated_on } else { now };
                Row {
                    values: vec![
                        Value::Guid(o.id),
                        Value::String(o.operation.clone()),
                        Value::String(String::new()),
                        Value::DateTime(o.started_on),
                        Value::DateTime(o.last_updated_on),
                        Value::Timespan(end - o.started_on),
                        Value::String(o.state.name().to_string()),
                        Value::String(o.status.clone()),
                        Value::Guid(o.id),
                        Value::Bool(o.should_retry),
                        Value::String(o.database.clone()),
                        Value::String("aadapp=kusto-sim".into()),
                        Value::String(String::new()),
                        Value::DateTime(o.started_on),
                    ],
                    meta: None,
                }
            })
            .collect();
        Frame { columns, rows, has_meta: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_age_out_after_the_retention() {
        let mut log = OperationLog::default();
        let old = log.start("DataExportToFile", "db", 0);
        log.finish(old, 10, Ok(Frame { columns: vec![], rows: vec![], has_meta: false }));
        let new = log.start("DataExportToFile", "db", 100);
        log.prune(150, 60);
        assert!(log.get(old).is_none());
        assert_eq!(log.get(new).unwrap().state, OpState::InProgress);
        assert_eq!(log.in_progress("DataExportToFile"), 1);
        assert_eq!(log.show(Some(&[new]), 200).rows.len(), 1);
    }
}
