//! Planning, as a pure function: row counts by ingestion-time bin and source extent, joined
//! with the extents' creation times, become blocks.
//!
//! A block is a half-open ingestion-time range `[from, to)` made of whole bins, so blocks
//! partition the iteration's rows exactly: every row is in one block, whatever merges do to
//! extent ids meanwhile (ingestion times survive merges; extent ids do not). A block closes
//! when the next bin would take it over the row limit, or would stretch the creation times
//! of its source extents beyond the allowed spread, so the creation time it is ingested with
//! stays true for all its rows. The creation time given is the newest of its extents': no
//! copied row expires on the destination before its original does on the source.

use crate::kusto::results::{Extent, RowCountBin};
use std::collections::{BTreeMap, HashMap};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most rows in one block (a bin larger than this is a block of its own: rows with one
    /// ingestion time cannot be split by ingestion time).
    pub max_rows: u64,
    /// Widest creation-time range of the source extents of one block.
    pub max_creation_spread: Duration,
    /// The bin size the counts were made with.
    pub bin: Duration,
    /// Bins counted by one planning step (one chunk of the window's ingestion times).
    pub bins_per_step: u32,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits { max_rows: 16_000_000, max_creation_spread: Duration::days(1), bin: Duration::hours(1), bins_per_step: 2_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBlock {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub rows: u64,
    /// `None` when no source extent of the block reported a creation time.
    pub creation_time: Option<OffsetDateTime>,
    pub oldest_creation_time: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub blocks: Vec<PlannedBlock>,
    /// Rows without an ingestion time: no cursor window can hold them, so they are not copied
    /// and are reported on the job.
    pub rows_without_ingestion_time: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bin {
    size: Duration,
    rows: u64,
    min_created: Option<OffsetDateTime>,
    max_created: Option<OffsetDateTime>,
}

fn min_opt(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Plans counts that were all made with `limits.bin`.
pub fn plan(counts: &[RowCountBin], extents: &[Extent], limits: &PlanLimits) -> Plan {
    let sized: Vec<(RowCountBin, Duration)> = counts.iter().map(|c| (c.clone(), limits.bin)).collect();
    plan_sized(&sized, extents, limits)
}

/// Bin starts whose rows exceed the block limit: worth counting again with smaller bins.
pub fn oversized_bins(counts: &[RowCountBin], max_rows: u64) -> Vec<OffsetDateTime> {
    let mut totals: BTreeMap<OffsetDateTime, u64> = BTreeMap::new();
    for c in counts {
        if let Some(start) = c.bin {
            *totals.entry(start).or_default() += c.rows.max(0) as u64;
        }
    }
    totals.into_iter().filter(|(_, rows)| *rows > max_rows).map(|(start, _)| start).collect()
}

/// Bin starts whose source extents were created further apart than a block may be: worth
/// counting again with smaller bins, so that extents created years apart but ingested in the
/// same hour (after a backfill, or an earlier copy) land in blocks of their own age.
pub fn spread_bins(counts: &[RowCountBin], extents: &[Extent], max_spread: Duration) -> Vec<OffsetDateTime> {
    let created: HashMap<String, (Option<OffsetDateTime>, Option<OffsetDateTime>)> =
        extents.iter().map(|e| (e.id.to_string().to_ascii_lowercase(), (e.min_created_on, e.max_created_on))).collect();
    let mut span: BTreeMap<OffsetDateTime, (Option<OffsetDateTime>, Option<OffsetDateTime>)> = BTreeMap::new();
    for c in counts {
        let (Some(start), Some(id)) = (c.bin, c.extent_id.as_deref()) else { continue };
        let (min_c, max_c) = created.get(&id.to_ascii_lowercase()).copied().unwrap_or((None, None));
        let entry = span.entry(start).or_default();
        *entry = (min_opt(entry.0, min_c), max_opt(entry.1, max_c));
    }
    span.into_iter().filter(|(_, (o, n))| matches!((o, n), (Some(o), Some(n)) if *n - *o > max_spread)).map(|(start, _)| start).collect()
}

/// Extent ids the counts name that the listing does not have: merged away in between.
pub fn unknown_extents(counts: &[RowCountBin], extents: &[Extent]) -> Vec<String> {
    let known: std::collections::HashSet<String> = extents.iter().map(|e| e.id.to_string().to_ascii_lowercase()).collect();
    let mut out: Vec<String> = counts.iter().filter_map(|c| c.extent_id.as_deref()).map(str::to_ascii_lowercase).filter(|id| !known.contains(id)).collect();
    out.sort();
    out.dedup();
    out
}

/// Plans counts made with bins of different sizes (each count with its bin's size): a bin too
/// large for one block is counted again with smaller bins, which then plan like any other.
pub fn plan_sized(counts: &[(RowCountBin, Duration)], extents: &[Extent], limits: &PlanLimits) -> Plan {
    let created: HashMap<String, (Option<OffsetDateTime>, Option<OffsetDateTime>)> = extents
        .iter()
        .map(|e| (e.id.to_string().to_ascii_lowercase(), (e.min_created_on, e.max_created_on)))
        .collect();
    let mut bins: BTreeMap<OffsetDateTime, Bin> = BTreeMap::new();
    let mut rows_without_ingestion_time = 0;
    for (c, size) in counts {
        let rows = c.rows.max(0) as u64;
        let Some(start) = c.bin else {
            rows_without_ingestion_time += rows;
            continue;
        };
        // An extent merged away since the counts were taken has no creation time here; the
        // block's other extents still give one, and the spread check ignores the unknown.
        let (min_c, max_c) = c
            .extent_id
            .as_deref()
            .and_then(|id| created.get(&id.to_ascii_lowercase()).copied())
            .unwrap_or((None, None));
        let bin = bins.entry(start).or_default();
        bin.size = bin.size.max(*size);
        bin.rows += rows;
        bin.min_created = min_opt(bin.min_created, min_c);
        bin.max_created = max_opt(bin.max_created, max_c);
    }

    let mut blocks: Vec<PlannedBlock> = Vec::new();
    let mut open: Option<PlannedBlock> = None;
    for (start, bin) in bins {
        if bin.rows == 0 {
            continue;
        }
        let end = start + bin.size;
        if let Some(block) = open.as_mut() {
            let oldest = min_opt(block.oldest_creation_time, bin.min_created);
            let newest = max_opt(block.creation_time, bin.max_created);
            let spread_ok = match (oldest, newest) {
                (Some(o), Some(n)) => n - o <= limits.max_creation_spread,
                _ => true,
            };
            // A gap between bins holds no rows of this window (the cursor window is fixed), so
            // a block may span it.
            if block.rows + bin.rows <= limits.max_rows && spread_ok {
                block.to = end;
                block.rows += bin.rows;
                block.oldest_creation_time = oldest;
                block.creation_time = newest;
                continue;
            }
            blocks.push(open.take().expect("open block"));
        }
        open = Some(PlannedBlock {
            from: start,
            to: end,
            rows: bin.rows,
            creation_time: bin.max_created,
            oldest_creation_time: bin.min_created,
        });
    }
    blocks.extend(open);
    Plan { blocks, rows_without_ingestion_time }
}

/// Why the destination cannot take what the copy produces, naming the columns; `None` when
/// it can. Every produced column must exist at the destination with the same type (else rows
/// would lose values or fail to ingest); a destination column the copy does not produce is
/// allowed and stays empty.
pub fn schema_mismatch(produced: &[crate::kusto::Column], destination: &[crate::kusto::Column]) -> Option<String> {
    let mut problems = Vec::new();
    for column in produced {
        match destination.iter().find(|d| d.name == column.name) {
            None => problems.push(format!("column {} ({:?}) has no column in the destination table", column.name, column.kind)),
            Some(d) if d.kind != column.kind => {
                problems.push(format!("column {} is {:?} in the copy but {:?} in the destination table", column.name, column.kind, d.kind))
            }
            Some(_) => {}
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    fn count(bin: Option<OffsetDateTime>, extent: Uuid, rows: i64) -> RowCountBin {
        RowCountBin { bin, extent_id: Some(extent.to_string()), rows, min_ingestion_time: bin, max_ingestion_time: bin }
    }

    fn extent(id: Uuid, created: OffsetDateTime) -> Extent {
        Extent { id, table: None, row_count: 0, min_created_on: Some(created), max_created_on: Some(created), tags: vec![] }
    }

    const H0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn limits(max_rows: u64, spread_hours: i64) -> PlanLimits {
        PlanLimits { max_rows, max_creation_spread: Duration::hours(spread_hours), bin: Duration::hours(1), bins_per_step: 100 }
    }

    #[test]
    fn bins_whose_extents_are_far_apart_in_age_are_found() {
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let counts = vec![count(Some(H0), old, 5), count(Some(H0), new, 5), count(Some(H0 + Duration::hours(1)), new, 5)];
        let extents = [extent(old, H0 - Duration::days(600)), extent(new, H0)];
        assert_eq!(spread_bins(&counts, &extents, Duration::days(1)), vec![H0]);
        assert!(spread_bins(&counts, &extents, Duration::days(700)).is_empty());
        assert_eq!(unknown_extents(&counts, &extents[1..]), vec![old.to_string()]);
    }

    #[test]
    fn adjacent_bins_fill_blocks_up_to_the_row_limit() {
        let e = Uuid::from_u128(1);
        let counts: Vec<_> = (0..5).map(|h| count(Some(H0 + Duration::hours(h)), e, 40)).collect();
        let p = plan(&counts, &[extent(e, H0)], &limits(100, 24));
        let shape: Vec<(i64, i64, u64)> = p
            .blocks
            .iter()
            .map(|b| (((b.from - H0).whole_hours()), (b.to - H0).whole_hours(), b.rows))
            .collect();
        assert_eq!(shape, vec![(0, 2, 80), (2, 4, 80), (4, 5, 40)]);
        assert_eq!(p.blocks.iter().map(|b| b.rows).sum::<u64>(), 200, "every row in exactly one block");
    }

    #[test]
    fn creation_time_spread_closes_a_block() {
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let counts = vec![count(Some(H0), old, 10), count(Some(H0 + Duration::hours(1)), new, 10)];
        let extents = [extent(old, H0 - Duration::days(400)), extent(new, H0 - Duration::days(10))];
        let p = plan(&counts, &extents, &limits(1_000, 24));
        assert_eq!(p.blocks.len(), 2, "400 and 10 days old do not share a block");
        assert_eq!(p.blocks[0].creation_time, Some(H0 - Duration::days(400)));
        assert_eq!(p.blocks[1].creation_time, Some(H0 - Duration::days(10)));
    }

    #[test]
    fn a_block_takes_the_newest_creation_time_of_its_extents() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let counts = vec![count(Some(H0), a, 5), count(Some(H0), b, 5)];
        let p = plan(&counts, &[extent(a, H0 - Duration::hours(3)), extent(b, H0 - Duration::hours(1))], &limits(100, 24));
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].creation_time, Some(H0 - Duration::hours(1)));
        assert_eq!(p.blocks[0].oldest_creation_time, Some(H0 - Duration::hours(3)));
    }

    #[test]
    fn rows_without_ingestion_time_are_counted_not_planned() {
        let e = Uuid::from_u128(1);
        let p = plan(&[count(None, e, 7), count(Some(H0), e, 3)], &[extent(e, H0)], &limits(100, 24));
        assert_eq!(p.rows_without_ingestion_time, 7);
        assert_eq!(p.blocks.iter().map(|b| b.rows).sum::<u64>(), 3);
    }

    #[test]
    fn an_oversized_bin_is_its_own_block_and_blocks_span_gaps() {
        let e = Uuid::from_u128(1);
        let counts = vec![count(Some(H0), e, 500), count(Some(H0 + Duration::hours(1)), e, 5), count(Some(H0 + Duration::hours(5)), e, 5)];
        let p = plan(&counts, &[extent(e, H0)], &limits(100, 24));
        assert_eq!(p.blocks.iter().map(|b| b.rows).collect::<Vec<_>>(), vec![500, 10]);
        assert_eq!(p.blocks[1].from, H0 + Duration::hours(1));
        assert_eq!(p.blocks[1].to, H0 + Duration::hours(6));
    }

    #[test]
    fn schemas_must_match_by_name_and_type() {
        use crate::kusto::{Column, KustoType};
        let col = |n: &str, k| Column { name: n.into(), kind: k };
        let produced = [col("Id", KustoType::Long), col("Name", KustoType::String)];
        assert_eq!(schema_mismatch(&produced, &[col("Name", KustoType::String), col("Id", KustoType::Long), col("Extra", KustoType::Real)]), None);
        let wrong = schema_mismatch(&produced, &[col("Id", KustoType::Int)]).unwrap();
        assert!(wrong.contains("column Id is Long in the copy but Int"), "{wrong}");
        assert!(wrong.contains("column Name (String) has no column"), "{wrong}");
    }

    #[test]
    fn refined_bins_split_what_one_coarse_bin_could_not() {
        let e = Uuid::from_u128(1);
        let coarse = vec![count(Some(H0), e, 300), count(Some(H0 + Duration::hours(1)), e, 10)];
        assert_eq!(oversized_bins(&coarse, 100), vec![H0]);
        // The oversized hour counted again by minute: three minutes of 100 rows.
        let mut sized: Vec<(RowCountBin, Duration)> =
            (0..3).map(|m| (count(Some(H0 + Duration::minutes(m)), e, 100), Duration::minutes(1))).collect();
        sized.push((coarse[1].clone(), Duration::hours(1)));
        let p = plan_sized(&sized, &[extent(e, H0)], &limits(150, 24));
        let shape: Vec<(i64, i64, u64)> =
            p.blocks.iter().map(|b| ((b.from - H0).whole_minutes(), (b.to - H0).whole_minutes(), b.rows)).collect();
        assert_eq!(shape, vec![(0, 1, 100), (1, 2, 100), (2, 120, 110)]);
    }

    #[test]
    fn an_empty_window_plans_nothing() {
        assert_eq!(plan(&[], &[], &PlanLimits::default()), Plan::default());
    }

    #[test]
    fn extents_merged_away_do_not_block_planning() {
        let counts = vec![count(Some(H0), Uuid::from_u128(9), 4)];
        let p = plan(&counts, &[], &limits(100, 24));
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].creation_time, None);
    }
}
