//! What the state of an async Kusto operation (`.show operations`) means for the block that
//! waits on it: still waiting, done, a new attempt, or a recorded failure of the activity.
//!
//! `.show operations` (learn.microsoft.com/kusto/management/show-operations) lists the states
//! `InProgress, Completed, Failed, PartiallySucceeded, Abandoned, BadInput, Scheduled,
//! Throttled, Canceled, Skipped`; only `InProgress` and `Scheduled` are still running.
//! `Throttled` means the operation was aborted because of throttling: it is final (reference
//! kusto.md). The docs say what each state is, not what a client should do; the choices below
//! are the conservative ones:
//! - a state that another try can change (`Failed`, `PartiallySucceeded`, `Throttled`,
//!   `Abandoned`, `Skipped`) is a new attempt: a new folder for an export (partial artifacts are
//!   never ingested), a new tag for an ingestion (whatever the old one ingested is dropped and
//!   never moved). Attempts are bounded (`Rules::max_*_attempts`), then the activity fails.
//! - a state that the same command would meet again, or that a person caused, stops the
//!   activity with the reason recorded: `BadInput` (the data or command is wrong; retrying
//!   repeats it) and `Canceled` (someone canceled it on purpose; resubmitting the job
//!   continues from the checkpoints).
//! - a state this client does not know stops the activity too: guessing "pending" could wait
//!   forever, guessing "done" would infer success from nothing.

use crate::kusto::results::OperationState;

/// Which step waits on the operation (their consequences agree today; the table keeps both so
/// a difference would be a visible row, not a hidden branch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Export,
    Ingestion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consequence {
    Pending,
    /// Done: an export lists its blobs; an ingestion is judged by the tag's row count.
    Succeeded,
    /// Give this attempt up and try again (bounded).
    NewAttempt(String),
    /// Stop the activity with this reason.
    Fail(String),
}

pub fn consequence(state: &OperationState, status: Option<&str>, waiting: Waiting) -> Consequence {
    use OperationState as S;
    let what = match waiting {
        Waiting::Export => "export",
        Waiting::Ingestion => "ingestion",
    };
    let said = status.filter(|s| !s.is_empty()).map(|s| format!(": {s}")).unwrap_or_default();
    match state {
        S::InProgress | S::Scheduled => Consequence::Pending,
        S::Completed => Consequence::Succeeded,
        S::Failed | S::PartiallySucceeded | S::Throttled | S::Abandoned | S::Skipped => {
            Consequence::NewAttempt(format!("{what} ended {state:?}{said}"))
        }
        S::BadInput => Consequence::Fail(format!("{what} ended BadInput{said}: the same command would fail again; fix the data or the schema, then submit the job again")),
        S::Canceled => Consequence::Fail(format!("{what} was canceled{said}: someone stopped it on purpose; submit the job again to continue")),
        S::Other(name) => Consequence::Fail(format!("{what} is in state '{name}', which kc does not know{said}: look at `.show operations`, then submit the job again")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationState as S;

    #[derive(Debug, PartialEq)]
    enum C {
        Pending,
        Succeeded,
        NewAttempt,
        Fail,
    }

    fn kind(c: Consequence) -> C {
        match c {
            Consequence::Pending => C::Pending,
            Consequence::Succeeded => C::Succeeded,
            Consequence::NewAttempt(_) => C::NewAttempt,
            Consequence::Fail(_) => C::Fail,
        }
    }

    #[test]
    fn every_state_has_one_consequence_for_each_waiting_step() {
        // (state, for an export, for an ingestion)
        let table = [
            (S::InProgress, C::Pending, C::Pending),
            (S::Scheduled, C::Pending, C::Pending),
            (S::Completed, C::Succeeded, C::Succeeded),
            (S::Failed, C::NewAttempt, C::NewAttempt),
            (S::PartiallySucceeded, C::NewAttempt, C::NewAttempt),
            (S::Throttled, C::NewAttempt, C::NewAttempt),
            (S::Abandoned, C::NewAttempt, C::NewAttempt),
            (S::Skipped, C::NewAttempt, C::NewAttempt),
            (S::BadInput, C::Fail, C::Fail),
            (S::Canceled, C::Fail, C::Fail),
            (S::Other("Paused".into()), C::Fail, C::Fail),
        ];
        for (state, export, ingestion) in table {
            assert_eq!(kind(consequence(&state, None, Waiting::Export)), export, "{state:?} export");
            assert_eq!(kind(consequence(&state, None, Waiting::Ingestion)), ingestion, "{state:?} ingestion");
        }
    }

    #[test]
    fn the_reason_names_the_state_and_what_kusto_said() {
        let Consequence::NewAttempt(why) = consequence(&S::Throttled, Some("aborted due to throttling"), Waiting::Export) else { panic!() };
        assert!(why.contains("Throttled") && why.contains("aborted due to throttling"), "{why}");
        let Consequence::Fail(why) = consequence(&S::BadInput, Some("bad mapping"), Waiting::Ingestion) else { panic!() };
        assert!(why.contains("BadInput") && why.contains("bad mapping") && why.contains("submit the job again"), "{why}");
    }
}
