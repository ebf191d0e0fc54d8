//! Typed builders for every query and management command the copy sends. Each returns a
//! [`Command`]: the text for Kusto, a redacted text for logs, the endpoint, and whether the
//! client may repeat it on its own after an ambiguous failure.
//!
//! Extent tags: `.show extents ... where tags has 'x'` matches by term, not by equality, so a
//! tag must not be contained in another tag in use. Make each one unique as a whole (e.g.
//! `drop-by:kc-<guid>`), and compare exactly on the rows (`results::Extent::has_tag`).

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::error::KustoError;
use super::quote::{datetime_literal, obfuscated_literal, string_literal, Ident, UserQuery};
use super::secret::SecretUrl;
use super::value::format_datetime;

/// Which REST endpoint runs the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `/v2/rest/query`.
    Query,
    /// `/v1/rest/mgmt`.
    Management,
}

/// A query or command ready to send.
#[derive(Clone)]
pub struct Command {
    kind: CommandKind,
    text: String,
    redacted: String,
    /// Safe to send twice: reads, and writes whose repeat is harmless (`ifexists`, drops).
    /// Others are only retried by the client when the service surely did not run them.
    repeatable: bool,
    server_timeout: Option<Duration>,
    /// Sent with `queryconsistency=strongconsistency` (Azure Data Explorer only).
    strong: bool,
}

impl Command {
    fn new(kind: CommandKind, text: Text, repeatable: bool) -> Command {
        Command {
            kind,
            text: text.sent,
            redacted: text.logged,
            repeatable,
            server_timeout: None,
            strong: false,
        }
    }

    /// Asks the engine to answer from the latest database state (request property
    /// `queryconsistency = strongconsistency`, concepts/query-consistency): a workload group
    /// may default to weak consistency, whose answers can lag a minute or two, and a plan or
    /// an export that misses just-ingested extents the cursor covers would lose their rows.
    /// The client leaves it out on Fabric, where the property is not documented.
    pub fn strongly_consistent(mut self) -> Command {
        self.strong = true;
        self
    }

    pub fn is_strongly_consistent(&self) -> bool {
        self.strong
    }

    /// A read-only query whose text holds no secret.
    pub(super) fn from_query(q: String) -> Command {
        Command::new(CommandKind::Query, text(q), true)
    }

    /// Raises (or lowers) Kusto's `servertimeout` for this request.
    pub fn with_server_timeout(mut self, timeout: Duration) -> Command {
        self.server_timeout = Some(timeout);
        self
    }

    pub fn kind(&self) -> CommandKind {
        self.kind
    }

    /// The text to send. It may hold `h'...'` secrets: never log it; log [`Command::redacted`].
    pub fn expose_text(&self) -> &str {
        &self.text
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub fn is_repeatable(&self) -> bool {
        self.repeatable
    }

    pub fn server_timeout(&self) -> Option<Duration> {
        self.server_timeout
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("kind", &self.kind)
            .field("text", &self.redacted)
            .field("repeatable", &self.repeatable)
            .field("server_timeout", &self.server_timeout)
            .finish()
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Command text built twice in step: once as sent, once as logged.
#[derive(Default)]
struct Text {
    sent: String,
    logged: String,
}

impl Text {
    fn push(&mut self, s: &str) -> &mut Self {
        self.sent.push_str(s);
        self.logged.push_str(s);
        self
    }

    fn secret(&mut self, url: &SecretUrl) -> Result<&mut Self, KustoError> {
        self.sent.push_str(&obfuscated_literal(url.expose())?);
        self.logged.push_str(&obfuscated_literal(&url.redacted())?);
        Ok(self)
    }
}

fn text(s: impl AsRef<str>) -> Text {
    let mut t = Text::default();
    t.push(s.as_ref());
    t
}

/// The rows a copy iteration reads: those ingested after `from` (exclusive; `None` for the
/// first iteration) and up to `to` (inclusive), as database cursors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorWindow {
    pub from: Option<String>,
    pub to: String,
}

impl CursorWindow {
    fn filter(&self) -> Result<String, KustoError> {
        let upper = format!("cursor_before_or_at({})", string_literal(&self.to)?);
        Ok(match &self.from {
            Some(from) => format!("| where cursor_after({}) and {upper}", string_literal(from)?),
            None => format!("| where {upper}"),
        })
    }
}

/// A half-open range of ingestion times `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestionRange {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
}

impl IngestionRange {
    fn filter(&self) -> String {
        format!(
            "| where ingestion_time() >= {} and ingestion_time() < {}",
            datetime_literal(self.from),
            datetime_literal(self.to)
        )
    }
}

/// The source rows of a block or a plan: table, cursor window, optional ingestion-time range,
/// then the user's query, each on its own line.
pub(super) fn source_rows(
    table: &Ident,
    window: &CursorWindow,
    range: Option<&IngestionRange>,
    user_query: Option<&UserQuery>,
) -> Result<String, KustoError> {
    let mut q = format!("{}\n{}", table.quoted(), window.filter()?);
    if let Some(range) = range {
        q.push('\n');
        q.push_str(&range.filter());
    }
    if let Some(user) = user_query {
        q.push('\n');
        q.push_str(user.as_str());
    }
    // The newline ends any comment the user query may close with.
    q.push('\n');
    Ok(q)
}

/// `print Cursor=cursor_current()`: the upper bound of a new iteration.
pub fn cursor_current() -> Command {
    Command::new(CommandKind::Query, text("print Cursor=cursor_current()"), true).strongly_consistent()
}

/// Row counts of a cursor window by ingestion-time bin and source extent, after the user
/// query. Columns: `IngestionTimeBin` (null for rows without ingestion time, which must be
/// reported), `ExtentId`, `RowCount`, `MinIngestionTime`, `MaxIngestionTime`.
///
/// `ingestion_time()` and `extent_id()` are read after the user query, as the original
/// kusto-copy does: they are row metadata, which `where` and `project` keep, whereas columns
/// captured before the query would be dropped by a `project` that does not name them.
pub fn row_counts_by_ingestion_bin(
    table: &Ident,
    window: &CursorWindow,
    user_query: Option<&UserQuery>,
    bin: Duration,
) -> Result<Command, KustoError> {
    row_counts_in_range(table, window, None, user_query, bin)
}

/// [`row_counts_by_ingestion_bin`] limited to an ingestion-time range: one chunk of an
/// incremental plan.
pub fn row_counts_in_range(
    table: &Ident,
    window: &CursorWindow,
    range: Option<&IngestionRange>,
    user_query: Option<&UserQuery>,
    bin: Duration,
) -> Result<Command, KustoError> {
    if bin.is_zero() {
        return Err(KustoError::invalid_input("bin size must be positive"));
    }
    let mut q = source_rows(table, window, range, user_query)?;
    q.push_str(&format!(
        "| summarize RowCount = count(), MinIngestionTime = min(ingestion_time()), \
         MaxIngestionTime = max(ingestion_time()) \
         by IngestionTimeBin = bin(ingestion_time(), {}), ExtentId = tostring(extent_id())\n\
         | order by IngestionTimeBin asc",
        timespan_literal(bin)
    ));
    Ok(Command::new(CommandKind::Query, text(q), true).strongly_consistent())
}

/// The size of a cursor window after the user query: `Rows`, `NoIngestionTime` (rows no
/// window can hold), `First` and `Last` ingestion times. Planning walks from `First` to
/// `Last` in bounded chunks.
pub fn window_summary(table: &Ident, window: &CursorWindow, user_query: Option<&UserQuery>) -> Result<Command, KustoError> {
    let mut q = source_rows(table, window, None, user_query)?;
    q.push_str(
        "| summarize Rows = count(), NoIngestionTime = countif(isnull(ingestion_time())), \
         First = min(ingestion_time()), Last = max(ingestion_time())",
    );
    Ok(Command::new(CommandKind::Query, text(q), true).strongly_consistent())
}

/// Rows of the table (after the user query) that have no ingestion time: no cursor window
/// holds them, so a copy cannot take them and must say how many there are. Answers `Count`.
pub fn rows_without_ingestion_time(table: &Ident, user_query: Option<&UserQuery>) -> Command {
    let mut q = format!("{}\n", table.quoted());
    if let Some(user) = user_query {
        q.push_str(user.as_str());
        q.push('\n');
    }
    q.push_str("| where isnull(ingestion_time())\n| count");
    Command::new(CommandKind::Query, text(q), true).strongly_consistent()
}

fn timespan_literal(d: Duration) -> String {
    // Whole seconds are plenty for bins; `time(...)` accepts `Ns` style literals.
    format!("{}s", d.as_secs().max(1))
}

/// The columns a copy produces, and nothing else: the table with the user query, no rows.
/// Compared with the destination's before anything is exported.
pub fn result_schema(table: &Ident, user_query: Option<&UserQuery>) -> Command {
    let mut q = format!("{}\n", table.quoted());
    if let Some(user) = user_query {
        q.push_str(user.as_str());
        q.push('\n');
    }
    q.push_str("| take 0");
    Command::new(CommandKind::Query, text(q), true)
}

/// `.show table T extents [where tags has 'tag']`: extent ids, row counts, creation times and
/// tags. `has` is a term match, so callers compare tags exactly on the returned rows.
pub fn show_extents(table: &Ident, tag: Option<&str>) -> Result<Command, KustoError> {
    let mut t = format!(".show table {} extents", table.quoted());
    if let Some(tag) = tag {
        t.push_str(&format!(" where tags has {}", string_literal(tag)?));
    }
    Ok(Command::new(CommandKind::Management, text(t), true))
}

/// `.show table T extents (id, ...)`: the listed extents that still exist in T.
pub fn show_extents_by_id(table: &Ident, ids: &[Uuid]) -> Result<Command, KustoError> {
    if ids.is_empty() {
        return Err(KustoError::invalid_input("no extent ids"));
    }
    Ok(Command::new(CommandKind::Management, text(format!(".show table {} extents ({})", table.quoted(), guid_list(ids))), true))
}

/// `.alter table T policy extent_tags_retention` keeping `drop-by:` tags for 200 years: a
/// table-level policy overrides the database's (deleting the table's policy would let a
/// database policy remove the tags, counted from the extents' old creation times).
/// Docs: management/extent-tags-retention-policy ("A database-level policy applies to all
/// tables in the database that don't override the policy"; the period "is measured starting
/// from the extent's creation time").
pub fn keep_extent_tags(table: &Ident) -> Result<Command, KustoError> {
    let policy = r#"[{"TagPrefix": "drop-by:", "RetentionPeriod": "73000.00:00:00"}]"#;
    Ok(Command::new(
        CommandKind::Management,
        text(format!(".alter table {} policy extent_tags_retention {}", table.quoted(), string_literal(policy)?)),
        true,
    ))
}

/// `.alter table T policy ingestionbatching`: a short batching time, so a block's queued
/// ingestion lands in seconds rather than the default five minutes.
pub fn short_ingestion_batching(table: &Ident) -> Result<Command, KustoError> {
    let policy = r#"{"MaximumBatchingTimeSpan": "00:00:15", "MaximumNumberOfItems": 500, "MaximumRawDataSizeMB": 1024}"#;
    Ok(Command::new(
        CommandKind::Management,
        text(format!(".alter table {} policy ingestionbatching {}", table.quoted(), string_literal(policy)?)),
        true,
    ))
}

/// `.alter table T policy restricted_view_access true`: the staging table's rows are seen
/// only by admins while they wait to be moved.
pub fn restrict_view(table: &Ident) -> Command {
    Command::new(CommandKind::Management, text(format!(".alter table {} policy restricted_view_access true", table.quoted())), true)
}

/// Exact row count of the rows carrying an extent tag (the ingest check of a block).
pub fn count_rows_with_tag(table: &Ident, tag: &str) -> Result<Command, KustoError> {
    let q = format!(
        "{}\n| where set_has_element(extent_tags(), {})\n| count",
        table.quoted(),
        string_literal(tag)?
    );
    Ok(Command::new(CommandKind::Query, text(q), true))
}

/// What one `.export async` writes.
#[derive(Debug, Clone)]
pub struct ExportRequest<'a> {
    pub table: &'a Ident,
    pub window: &'a CursorWindow,
    pub range: Option<&'a IngestionRange>,
    pub user_query: Option<&'a UserQuery>,
    /// Folder URL(s) with a write SAS.
    pub destinations: &'a [SecretUrl],
    pub name_prefix: &'a str,
}

/// `.export async compressed to parquet (h'...') with (...) <| <rows>`; answers an
/// OperationId. Not repeatable: a second one would write a second copy of the block.
///
/// Exact only for `bool int long real string dynamic` columns: by the export docs' "Parquet
/// data types mapping" datetime is TIMESTAMP_MICROS (100 ns ticks lost; `parquetDatetimePrecision`
/// offers only millisecond and microsecond), timespan INT64 ticks and guid UTF8, which the
/// documented Parquet ingestion conversions do not turn back into timespan or guid.
pub fn export_parquet(req: &ExportRequest<'_>) -> Result<Command, KustoError> {
    let mut t = export_head("parquet", req)?;
    t.push(&format!(
        ") with (namePrefix={}, persistDetails=true, distribution='per_node', \
         parquetDatetimePrecision='microsecond') <|\n",
        string_literal(req.name_prefix)?
    ));
    t.push(&source_rows(req.table, req.window, req.range, req.user_query)?);
    Ok(Command::new(CommandKind::Management, t, false).strongly_consistent())
}

/// `.export async compressed to csv (h'...') with (..., includeHeaders='none') <| <rows>`:
/// gzip CSV artifacts (`.csv.gz`; "Export data to storage": `compressed` writes `.gz`,
/// `compressionType` defaults to gzip) with no header line, so every record is data. Columns
/// come in the order of the rows' schema; the ingestion maps them back by ordinal
/// ([`csv_ordinal_mapping`]). Not repeatable, as [`export_parquet`].
pub fn export_csv(req: &ExportRequest<'_>) -> Result<Command, KustoError> {
    let mut t = export_head("csv", req)?;
    t.push(&format!(
        ") with (namePrefix={}, persistDetails=true, distribution='per_node', includeHeaders='none') <|\n",
        string_literal(req.name_prefix)?
    ));
    t.push(&source_rows(req.table, req.window, req.range, req.user_query)?);
    Ok(Command::new(CommandKind::Management, t, false).strongly_consistent())
}

/// A CSV ingestion mapping that reads field `i` into the column named `columns[i]` ("CSV
/// mapping": each element a `Column` and `Properties.Ordinal`). Columns of the table it does
/// not name stay empty, as destination columns the copy does not produce should.
pub fn csv_ordinal_mapping(columns: &[String]) -> String {
    let list: Vec<serde_json::Value> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"Column": c, "Properties": {"Ordinal": i.to_string()}}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

fn export_head(format: &str, req: &ExportRequest<'_>) -> Result<Text, KustoError> {
    if req.destinations.is_empty() {
        return Err(KustoError::invalid_input("export needs a destination"));
    }
    let mut t = text(format!(".export async compressed to {format} ("));
    for (i, dest) in req.destinations.iter().enumerate() {
        if i > 0 {
            t.push(", ");
        }
        t.secret(dest)?;
    }
    Ok(t)
}

fn guid_list(ids: &[Uuid]) -> String {
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
}

/// `.show operations (id, ...)`: state of async operations.
pub fn show_operations(ids: &[Uuid]) -> Result<Command, KustoError> {
    if ids.is_empty() {
        return Err(KustoError::invalid_input("no operation ids"));
    }
    Ok(Command::new(
        CommandKind::Management,
        text(format!(".show operations ({})", guid_list(ids))),
        true,
    ))
}

/// `.show operation <id> details`: for an export, the blobs it wrote (Path, NumRecords).
pub fn show_operation_details(id: Uuid) -> Command {
    Command::new(
        CommandKind::Management,
        text(format!(".show operation {id} details")),
        true,
    )
}

/// `.show operations` with no ids: every operation the principal may see from the last two
/// weeks, running or not, possibly several rows per operation (the latest row wins). Only
/// for the rare look for an export whose start answer was lost: on a busy cluster it is long.
pub fn show_all_operations() -> Command {
    Command::new(CommandKind::Management, text(".show operations"), true)
}

/// `.show capacity`: columns Resource, Total, Consumed, Remaining (and Origin).
pub fn show_capacity() -> Command {
    Command::new(CommandKind::Management, text(".show capacity"), true)
}

/// `.show table T policy retention`: the table's own policy (`Policy` is null when the table
/// has none and its database's applies). Docs: management/show-table-retention-policy-command
/// (Database User or Viewer may run it).
pub fn show_table_retention(table: &Ident) -> Command {
    Command::new(CommandKind::Management, text(format!(".show table {} policy retention", table.quoted())), true)
}

/// `.show database D policy retention`: what applies to every table without its own
/// (management/retention-policy: "The policy then applies to all tables in the database that
/// don't override it").
pub fn show_database_retention(database: &Ident) -> Command {
    Command::new(CommandKind::Management, text(format!(".show database {} policy retention", database.quoted())), true)
}

/// `.show table * policy update`: every table's update policy (`Policy` a JSON array of
/// `{IsEnabled, Source, Query, IsTransactional, ...}`, null for none). Docs:
/// management/show-table-update-policy-command.
pub fn show_update_policies() -> Command {
    Command::new(CommandKind::Management, text(".show table * policy update"), true)
}

/// `.show materialized-views`: `Name`, `SourceTable`, `Query`, `IsEnabled`, ...
/// (management/materialized-views/materialized-view-show-commands).
pub fn show_materialized_views() -> Command {
    Command::new(CommandKind::Management, text(".show materialized-views"), true)
}

/// `.show tables`.
pub fn show_tables() -> Command {
    Command::new(CommandKind::Management, text(".show tables"), true)
}

/// `.create table New based-on Template ifnotexists [with (folder='...')]`: a staging table
/// with the template's schema and policies (not its update policy).
pub fn create_table_based_on(
    new_table: &Ident,
    template: &Ident,
    folder: Option<&str>,
) -> Result<Command, KustoError> {
    let mut t = format!(
        ".create table {} based-on {} ifnotexists",
        new_table.quoted(),
        template.quoted()
    );
    if let Some(folder) = folder {
        t.push_str(&format!(" with (folder={})", string_literal(folder)?));
    }
    Ok(Command::new(CommandKind::Management, text(t), true))
}

/// `.create table T (c:type, ...)`: a destination table with the columns a copy produces.
/// Kusto answers success without change if the table already exists.
pub fn create_table(table: &Ident, columns: &[super::Column]) -> Result<Command, KustoError> {
    if columns.is_empty() {
        return Err(KustoError::invalid_input("a table needs at least one column"));
    }
    let list = columns
        .iter()
        .map(|c| Ok(format!("{}:{}", Ident::new(c.name.clone())?.quoted(), c.kind.name())))
        .collect::<Result<Vec<_>, KustoError>>()?
        .join(", ");
    Ok(Command::new(CommandKind::Management, text(format!(".create table {} ({list})", table.quoted())), true))
}

/// Turns merges and rebuilds off, so each tagged extent keeps its rows countable by tag.
pub fn disable_merges(table: &Ident) -> Result<Command, KustoError> {
    let policy = r#"{"AllowRebuild": false, "AllowMerge": false}"#;
    Ok(Command::new(
        CommandKind::Management,
        text(format!(
            ".alter table {} policy merge {}",
            table.quoted(),
            string_literal(policy)?
        )),
        true,
    ))
}

/// `.delete table T policy partitioning`: partitioning would rewrite the tagged extents.
pub fn delete_partitioning_policy(table: &Ident) -> Command {
    Command::new(
        CommandKind::Management,
        text(format!(".delete table {} policy partitioning", table.quoted())),
        true,
    )
}

/// `.delete table T policy extent_tags_retention`: tags must outlive the copy.
pub fn delete_extent_tags_retention_policy(table: &Ident) -> Command {
    Command::new(
        CommandKind::Management,
        text(format!(".delete table {} policy extent_tags_retention", table.quoted())),
        true,
    )
}

/// `.move extents to table Dest with (setNewIngestionTime=true) <| .show table Src extents
/// where tags has 'tag'`: moves exactly the extents of one block, all or nothing.
pub fn move_extents_with_tag(
    from: &Ident,
    to: &Ident,
    tag: &str,
    run_async: bool,
) -> Result<Command, KustoError> {
    let t = format!(
        ".move {}extents to table {} with (setNewIngestionTime=true) <|\n.show table {} extents where tags has {}",
        if run_async { "async " } else { "" },
        to.quoted(),
        from.quoted(),
        string_literal(tag)?
    );
    Ok(Command::new(CommandKind::Management, text(t), false))
}

/// `.move extents from table Src to table Dest with (setNewIngestionTime=true) (id, ...)`.
pub fn move_extents(
    from: &Ident,
    to: &Ident,
    extent_ids: &[Uuid],
    run_async: bool,
) -> Result<Command, KustoError> {
    if extent_ids.is_empty() {
        return Err(KustoError::invalid_input("no extents to move"));
    }
    let t = format!(
        ".move {}extents from table {} to table {} with (setNewIngestionTime=true) ({})",
        if run_async { "async " } else { "" },
        from.quoted(),
        to.quoted(),
        guid_list(extent_ids)
    );
    Ok(Command::new(CommandKind::Management, text(t), false))
}

/// `.drop table T extent tags ('tag', ...) [with (extentCreatedOnFrom=..., extentCreatedOnTo=...)]`.
/// The creation-time range narrows the extents Kusto scans.
pub fn drop_extent_tags(
    table: &Ident,
    tags: &[&str],
    created_on: Option<(OffsetDateTime, OffsetDateTime)>,
) -> Result<Command, KustoError> {
    if tags.is_empty() {
        return Err(KustoError::invalid_input("no tags to drop"));
    }
    let list = tags
        .iter()
        .map(|t| string_literal(t))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    let mut t = format!(".drop table {} extent tags ({list})", table.quoted());
    if let Some((from, to)) = created_on {
        t.push_str(&format!(
            " with (extentCreatedOnFrom={}, extentCreatedOnTo={})",
            datetime_literal(from),
            datetime_literal(to)
        ));
    }
    Ok(Command::new(CommandKind::Management, text(t), true))
}

/// `.drop extents <| .show table T extents where tags has 'tag'`: removes a stray ingestion.
pub fn drop_extents_with_tag(table: &Ident, tag: &str) -> Result<Command, KustoError> {
    let t = format!(
        ".drop extents <|\n.show table {} extents where tags has {}",
        table.quoted(),
        string_literal(tag)?
    );
    Ok(Command::new(CommandKind::Management, text(t), true))
}

/// `.drop extents (id, ...) from T`.
pub fn drop_extents(table: &Ident, extent_ids: &[Uuid]) -> Result<Command, KustoError> {
    if extent_ids.is_empty() {
        return Err(KustoError::invalid_input("no extents to drop"));
    }
    Ok(Command::new(
        CommandKind::Management,
        text(format!(
            ".drop extents ({}) from {}",
            guid_list(extent_ids),
            table.quoted()
        )),
        true,
    ))
}

/// `.drop table T ifexists`.
pub fn drop_table(table: &Ident) -> Command {
    Command::new(
        CommandKind::Management,
        text(format!(".drop table {} ifexists", table.quoted())),
        true,
    )
}

/// Properties of a direct `.ingest` (and of a queued ingestion, see `ingest.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestProperties {
    pub format: String,
    pub creation_time: Option<OffsetDateTime>,
    pub tags: Vec<String>,
    /// Skip the ingestion when an extent already has one of these `ingest-by:` tags.
    pub ingest_if_not_exists: Vec<String>,
    /// `ingestionMapping`: the mapping's JSON text (CSV maps fields to columns by ordinal).
    pub ingestion_mapping: Option<String>,
}

impl IngestProperties {
    pub fn parquet() -> IngestProperties {
        IngestProperties {
            format: "parquet".to_string(),
            creation_time: None,
            tags: Vec::new(),
            ingest_if_not_exists: Vec::new(),
            ingestion_mapping: None,
        }
    }

    /// Gzip CSV (known by the blobs' `.gz` extension) read into the named columns by ordinal.
    pub fn csv(columns: &[String]) -> IngestProperties {
        IngestProperties { format: "csv".to_string(), ingestion_mapping: Some(csv_ordinal_mapping(columns)), ..IngestProperties::parquet() }
    }
}

/// `.ingest async into table T (h'blob', ...) with (format=..., creationTime=..., tags=...)`:
/// the route without the ingest endpoint, tracked through `.show operations`.
pub fn ingest_async(
    table: &Ident,
    blobs: &[SecretUrl],
    props: &IngestProperties,
) -> Result<Command, KustoError> {
    if blobs.is_empty() {
        return Err(KustoError::invalid_input("no blobs to ingest"));
    }
    let mut t = text(format!(".ingest async into table {} (", table.quoted()));
    for (i, blob) in blobs.iter().enumerate() {
        if i > 0 {
            t.push(", ");
        }
        t.secret(blob)?;
    }
    let mut with = vec![format!("format={}", string_literal(&props.format)?)];
    if let Some(ct) = props.creation_time {
        with.push(format!("creationTime={}", string_literal(&format_datetime(ct))?));
    }
    if !props.tags.is_empty() {
        let json = serde_json::to_string(&props.tags)
            .map_err(|e| KustoError::invalid_input(e.to_string()))?;
        with.push(format!("tags={}", string_literal(&json)?));
    }
    if !props.ingest_if_not_exists.is_empty() {
        let json = serde_json::to_string(&props.ingest_if_not_exists)
            .map_err(|e| KustoError::invalid_input(e.to_string()))?;
        with.push(format!("ingestIfNotExists={}", string_literal(&json)?));
    }
    if let Some(mapping) = &props.ingestion_mapping {
        with.push(format!("ingestionMapping={}", string_literal(mapping)?));
    }
    t.push(&format!(") with ({})", with.join(", ")));
    Ok(Command::new(CommandKind::Management, t, false))
}
