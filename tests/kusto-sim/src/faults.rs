//! Faults on demand: scripted ("the next 2 exports are throttled") or random with a seed
//! ("10 % of queries answer 503"), per command kind. The plan is pure data plus a small
//! deterministic generator, so a failing test replays exactly.

use std::time::Duration;

/// What a request is, for choosing which faults apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    Query,
    Show,
    Export,
    Ingest,
    QueuedIngest,
    Move,
    DropExtents,
    DropTags,
    Schema,
    Other,
}

impl CommandKind {
    /// Classifies a request text (a query or a `.command`).
    pub fn of(csl: &str) -> CommandKind {
        let t = csl.trim_start();
        if !t.starts_with('.') {
            return CommandKind::Query;
        }
        let words: Vec<String> =
            t[1..].split_whitespace().take(6).map(|w| w.to_ascii_lowercase()).collect();
        let has = |w: &str| words.iter().any(|x| x == w);
        match words.first().map(String::as_str) {
            Some("show") => CommandKind::Show,
            Some("export") => CommandKind::Export,
            Some("ingest") | Some("set-or-append") | Some("append") | Some("set") | Some("set-or-replace") => {
                CommandKind::Ingest
            }
            Some("move") => CommandKind::Move,
            Some("drop") if has("tags") => CommandKind::DropTags,
            Some("drop") if has("extents") || has("extent") => CommandKind::DropExtents,
            Some("create") | Some("create-merge") | Some("drop") | Some("alter") | Some("alter-merge")
            | Some("delete") | Some("execute") => CommandKind::Schema,
            _ => CommandKind::Other,
        }
    }
}

/// What a request is, in a few words for counting: `query`, `.export`, `.move`,
/// `.show operations`, `.show extents` (of a table), `.show policy`... The management
/// command's verb, and for `.show` what is shown.
pub fn request_label(csl: &str) -> String {
    let t = csl.trim_start();
    if !t.starts_with('.') {
        return "query".into();
    }
    let words: Vec<String> = t.split_whitespace().take(5).map(|w| w.to_ascii_lowercase()).collect();
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
    let bare = |w: &str| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-').to_owned();
    match word(0) {
        ".show" => {
            // `.show table T extents`, `.show database D policy retention`: what is shown.
            let shown = if matches!(word(1), "table" | "database") && !word(3).is_empty() { bare(word(3)) } else { bare(word(1)) };
            format!(".show {}", if shown == "operation" { "operations".into() } else { shown })
        }
        ".drop" if words.iter().any(|w| w == "tags") => ".drop extent tags".into(),
        ".drop" if words.iter().any(|w| w == "extents" || w == "extent") => ".drop extents".into(),
        verb => verb.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 before the request runs.
    Throttle,
    /// A 5xx (e.g. 500, 503, 520) before the request runs.
    ServerError(u16),
    /// The connection is dropped without an answer, before the request runs.
    ConnectionDrop,
    /// The request runs, then the connection drops: the caller cannot know it succeeded.
    DropAfterExecution,
    /// A v2 query answers 200 with part of its rows, then an error row, and
    /// `DataSetCompletion.HasErrors = true` (Kusto's partial query failure).
    PartialQueryFailure,
    /// An export writes part of its files, then its operation fails.
    ExportPartialFailure,
    /// An ingestion's operation fails without adding data.
    IngestionFailure,
    /// An ingestion adds its data twice (two extents), as a duplicated queue message would.
    DuplicateIngestion,
    /// An async operation takes this much longer.
    Slow(Duration),
    /// The operation record disappears as soon as the operation ends.
    ExpireOperation,
    /// After the command, the table's mergeable extents merge into one with a new id.
    MergeExtents,
    /// A queued ingestion's status is forgotten once it ends: status answers 404 (the service
    /// keeps it only for a while).
    ForgetIngestionStatus,
    /// A queued blob is ingested a second time this long after the first (a duplicate of a
    /// queue message arriving late).
    LateDuplicate(Duration),
    /// Right after a `.show ... extents where tags has` answer that lists an extent of a table
    /// whose name starts with `table_prefix`, a copy of it (same tag and rows, a new id) lands
    /// in that table: a late duplicate of an ingestion, arriving between a count by tag and
    /// whatever the counter does next.
    DuplicateAfterCount { table_prefix: String },
    /// The next ingestion into a table whose name starts with `table_prefix` lands with the
    /// value of `column` in its first row changed, and as many rows: a value lost between the
    /// blob and the extent that no count can see.
    CorruptIngestedValue { table_prefix: String, column: String },
    /// The next ingestion into such a table lands with the values of `column` in its first
    /// two rows swapped: every column holds the same values, only not in the same rows.
    SwapIngestedValues { table_prefix: String, column: String },
}

impl Fault {
    /// Faults the HTTP layer applies (before or right after the command runs); the others
    /// are applied by the command itself.
    pub fn is_request_level(&self) -> bool {
        matches!(
            self,
            Fault::Throttle | Fault::ServerError(_) | Fault::ConnectionDrop | Fault::DropAfterExecution | Fault::PartialQueryFailure
        )
    }
}

impl Fault {
    /// Faults taken where they name a table (by [`FaultPlan::take_for_table`]), never by a
    /// request's kind.
    pub fn is_taken_by_table(&self) -> bool {
        matches!(self, Fault::DuplicateAfterCount { .. } | Fault::CorruptIngestedValue { .. } | Fault::SwapIngestedValues { .. })
    }

    /// The fault's kind, for counts of what a run met.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Throttle => "throttle",
            Fault::ServerError(_) => "server_error",
            Fault::ConnectionDrop => "connection_drop",
            Fault::DropAfterExecution => "drop_after_execution",
            Fault::PartialQueryFailure => "partial_query_failure",
            Fault::ExportPartialFailure => "export_partial_failure",
            Fault::IngestionFailure => "ingestion_failure",
            Fault::DuplicateIngestion => "duplicate_ingestion",
            Fault::Slow(_) => "slow",
            Fault::ExpireOperation => "expire_operation",
            Fault::MergeExtents => "merge_extents",
            Fault::ForgetIngestionStatus => "forget_ingestion_status",
            Fault::LateDuplicate(_) => "late_duplicate",
            Fault::DuplicateAfterCount { .. } => "duplicate_after_count",
            Fault::CorruptIngestedValue { .. } => "corrupt_ingested_value",
            Fault::SwapIngestedValues { .. } => "swap_ingested_values",
        }
    }

    fn table_prefix(&self) -> Option<&str> {
        match self {
            Fault::DuplicateAfterCount { table_prefix } | Fault::CorruptIngestedValue { table_prefix, .. } | Fault::SwapIngestedValues { table_prefix, .. } => Some(table_prefix),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Scripted {
    kind: Option<CommandKind>,
    fault: Fault,
    remaining: u32,
}

#[derive(Debug, Clone)]
struct Random {
    kind: Option<CommandKind>,
    fault: Fault,
    probability: f64,
    /// How many more times it may fire (`None`: without end).
    remaining: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    scripted: Vec<Scripted>,
    random: Vec<Random>,
    rng: u64,
    /// Faults handed out so far, by kind.
    fired: std::collections::BTreeMap<&'static str, u64>,
}

impl FaultPlan {
    /// The next `times` requests of `kind` (any kind when `None`) get `fault`.
    pub fn script(&mut self, kind: Option<CommandKind>, fault: Fault, times: u32) {
        self.scripted.push(Scripted { kind, fault, remaining: times });
    }

    /// Each request of `kind` gets `fault` with this probability, drawn from the seeded generator.
    pub fn random(&mut self, seed: u64, kind: Option<CommandKind>, fault: Fault, probability: f64) {
        self.rng = seed ^ 0x9E37_79B9_7F4A_7C15;
        self.random.push(Random { kind, fault, probability, remaining: None });
    }

    /// As [`FaultPlan::random`], firing at most `max` times: for faults of which a client
    /// tolerates only so many (each spoiled export costs its block one of a bounded number of
    /// attempts), at random requests rather than the first ones.
    pub fn random_at_most(&mut self, seed: u64, kind: Option<CommandKind>, fault: Fault, probability: f64, max: u32) {
        self.random(seed, kind, fault, probability);
        if let Some(r) = self.random.last_mut() {
            r.remaining = Some(max);
        }
    }

    /// Takes one scripted fault that `wanted` accepts, whatever its command kind.
    pub fn take_scripted(&mut self, wanted: impl Fn(&Fault) -> bool) -> bool {
        let Some(s) = self.scripted.iter_mut().find(|s| s.remaining > 0 && wanted(&s.fault)) else { return false };
        s.remaining -= 1;
        *self.fired.entry(s.fault.name()).or_default() += 1;
        self.scripted.retain(|s| s.remaining > 0);
        true
    }

    /// Takes one scripted data fault (corrupt or swap) for an ingestion into `table`.
    pub fn take_for_table(&mut self, table: &str) -> Option<Fault> {
        let s = self.scripted.iter_mut().find(|s| {
            s.remaining > 0
                && matches!(s.fault, Fault::CorruptIngestedValue { .. } | Fault::SwapIngestedValues { .. })
                && s.fault.table_prefix().is_some_and(|p| table.starts_with(p))
        })?;
        s.remaining -= 1;
        let fault = s.fault.clone();
        self.scripted.retain(|s| s.remaining > 0);
        *self.fired.entry(fault.name()).or_default() += 1;
        Some(fault)
    }

    /// Scripted faults not yet met (tests check that a scenario really met its faults).
    pub fn pending(&self) -> u32 {
        self.scripted.iter().map(|s| s.remaining).sum()
    }

    pub fn clear(&mut self) {
        self.scripted.clear();
        self.random.clear();
    }

    /// Takes the faults that apply to one request of `kind` at one stage.
    pub fn take(&mut self, kind: CommandKind, request_level: bool) -> Vec<Fault> {
        let mut out = Vec::new();
        for s in self.scripted.iter_mut() {
            // A duplicate after a count is taken where the count is answered, never here.
            if s.remaining > 0 && s.kind.is_none_or(|k| k == kind) && s.fault.is_request_level() == request_level && !s.fault.is_taken_by_table() {
                s.remaining -= 1;
                out.push(s.fault.clone());
            }
        }
        self.scripted.retain(|s| s.remaining > 0);
        for i in 0..self.random.len() {
            let r = &self.random[i];
            if !(r.kind.is_none_or(|k| k == kind) && r.fault.is_request_level() == request_level) {
                continue;
            }
            // Drawn even when spent, so a cap does not shift the other faults' draws.
            let hit = self.next_unit() < self.random[i].probability;
            let r = &mut self.random[i];
            if hit && r.remaining != Some(0) {
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                out.push(r.fault.clone());
            }
        }
        for f in &out {
            *self.fired.entry(f.name()).or_default() += 1;
        }
        out
    }

    /// Faults handed out so far, by kind.
    pub fn fired(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.fired.clone()
    }

    /// splitmix64: tiny, deterministic, good enough for fault dice.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_commands() {
        assert_eq!(CommandKind::of("T | take 1"), CommandKind::Query);
        assert_eq!(CommandKind::of(".export async to parquet (h'x') <| T"), CommandKind::Export);
        assert_eq!(CommandKind::of(".drop table T extent tags ('a')"), CommandKind::DropTags);
        assert_eq!(CommandKind::of(".drop extents <| .show table T extents"), CommandKind::DropExtents);
        assert_eq!(CommandKind::of(".drop table T"), CommandKind::Schema);
        assert_eq!(CommandKind::of(".show operations"), CommandKind::Show);
    }

    #[test]
    fn labels_requests_by_verb_and_what_is_shown() {
        assert_eq!(request_label("T | count"), "query");
        assert_eq!(request_label(".export async compressed to parquet (h'x') <| T"), ".export");
        assert_eq!(request_label(".show table T extents (a, b)"), ".show extents");
        assert_eq!(request_label(".show database D policy retention"), ".show policy");
        assert_eq!(request_label(".show operation 1234 details"), ".show operations");
        assert_eq!(request_label(".show operations (1, 2)"), ".show operations");
        assert_eq!(request_label(".show capacity | where Resource == 'DataExport'"), ".show capacity");
        assert_eq!(request_label(".drop table T extent tags ('a')"), ".drop extent tags");
        assert_eq!(request_label(".move async extents (x) from table A to table B"), ".move");
    }

    #[test]
    fn drawn_durations_stay_within_the_spread_and_repeat() {
        use crate::model::cluster::{drawn_duration, Spread};
        let mean = Duration::from_secs(2);
        let spread = Spread { seed: 7, fraction: 0.3 };
        let draws: Vec<Duration> = (0..1000).map(|i| drawn_duration(mean, spread, CommandKind::Export, i)).collect();
        assert!(draws.iter().all(|d| *d >= Duration::from_millis(1400) && *d <= Duration::from_millis(2600)));
        let average = draws.iter().sum::<Duration>().as_secs_f64() / 1000.0;
        assert!((average - 2.0).abs() < 0.05, "{average}");
        assert!(draws.iter().any(|d| *d < Duration::from_millis(1500)) && draws.iter().any(|d| *d > Duration::from_millis(2500)));
        assert_eq!(draws[17], drawn_duration(mean, spread, CommandKind::Export, 17));
        assert_ne!(draws[17], drawn_duration(mean, spread, CommandKind::Move, 17));
    }

    #[test]
    fn scripted_faults_fire_the_given_number_of_times() {
        let mut p = FaultPlan::default();
        p.script(Some(CommandKind::Export), Fault::Throttle, 2);
        assert!(p.take(CommandKind::Query, true).is_empty());
        assert_eq!(p.take(CommandKind::Export, true), vec![Fault::Throttle]);
        assert!(p.take(CommandKind::Export, false).is_empty());
        assert_eq!(p.take(CommandKind::Export, true), vec![Fault::Throttle]);
        assert!(p.take(CommandKind::Export, true).is_empty());
    }

    #[test]
    fn random_faults_replay_with_the_same_seed() {
        let roll = |seed| {
            let mut p = FaultPlan::default();
            p.random(seed, None, Fault::ServerError(503), 0.3);
            (0..200).map(|_| !p.take(CommandKind::Query, true).is_empty()).collect::<Vec<_>>()
        };
        assert_eq!(roll(7), roll(7));
        assert_ne!(roll(7), roll(8));
        let hits = roll(7).iter().filter(|h| **h).count();
        assert!((30..90).contains(&hits), "{hits}");
    }

    #[test]
    fn a_capped_random_fault_fires_at_most_its_count() {
        let mut p = FaultPlan::default();
        p.random_at_most(7, Some(CommandKind::Export), Fault::ExportPartialFailure, 0.5, 2);
        let fired: Vec<usize> =
            (0..100).filter(|_| p.take(CommandKind::Export, false).contains(&Fault::ExportPartialFailure)).collect();
        assert_eq!(fired.len(), 2, "{fired:?}");
    }
}
