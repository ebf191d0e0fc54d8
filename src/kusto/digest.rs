//! The content digest of a block, computed by Kusto on each side of a copy and compared
//! before the block is moved (`verify: content`).
//!
//! One query per side, over exactly the rows in question, answering one row:
//! - `Rows`: `count()`;
//! - `C0..Cn`: per column, the sum of `hash_xxhash64(<value as text>, P)` over the rows: a
//!   sum does not depend on row order (extents and exports order rows as they please), and
//!   a changed value changes it;
//! - `RowHash`: the sum over the rows of a hash of that row's column hashes joined in column
//!   order, so a value moved from one row to another (every column sum unchanged) is caught;
//! - `P0..Pn` (three columns or more): per column `i`, the sum of a hash of the pair (column
//!   `i`, column `i + 1`, cyclically). A value moved between rows in column `k` alone changes
//!   the pairs `k - 1` and `k` only, which names the column. (With two columns, moving a
//!   value of either between two rows is the same change; with one, it is no change at all.)
//!
//! Hash function: `hash_xxhash64`, which the docs give a fixed algorithm and examples for
//! (https://learn.microsoft.com/azure/data-explorer/kusto/query/hash-xxhash64-function).
//! Not `hash()`: "The function calculates hashes using the xxhash64 algorithm, but this may
//! change. It's recommended to only use this function within a single query"
//! (https://learn.microsoft.com/azure/data-explorer/kusto/query/hash-function), and two
//! clusters answering two queries are exactly what this compares.
//!
//! The `mod` argument (an `int`, so written `int(P)`: a bare integer literal is a `long`; the
//! result is "between 0 and mod - 1", same page) keeps
//! each hash below the prime `P = 2^31 - 1`, so a sum over up to 2^32 rows fits a `long`
//! exactly and is compared whole (no reduction needed). How Kusto turns a hash at or above
//! 2^63 into a `long` before `mod` is not documented; it does not matter here, because
//! both sides are the same function on the same text.
//!
//! Values as text, per type (the docs do not say how `hash_xxhash64` encodes a non-string,
//! so every value is made a string first, the same way on both sides):
//! - `string`: itself (Kusto strings are never null);
//! - `dynamic`: `tostring(pack_array(v))`, the JSON text of a one-element array, so null,
//!   `""`, `1` and `"1"` stay apart, and a reordered property bag is a difference;
//! - every other type: `"n"` for null, else `"v"` followed by `tostring(v)` (the type's own
//!   text form: 7 tick digits for datetime and timespan, the guid, every decimal digit).
//!   For `real`, equality of the text forms is what is checked (`tostring` of a real is
//!   not documented to be round-trip exact).
//!
//! Cost: two queries per block, each scanning the block's rows once on its side, and one
//! schema read (`take 0`, no rows) of the source. See the README.

use uuid::Uuid;

use super::commands::{source_rows, Command, CursorWindow, IngestionRange};
use super::error::KustoError;
use super::quote::{Ident, UserQuery};
use super::response::{Column, DataSet, Row};
use super::value::KustoType;

/// The modulus of every value hash: the largest prime that fits Kusto's `int` `mod` argument.
pub const PRIME: i64 = 2_147_483_647;

/// `strcat` takes at most 64 arguments (docs: query/strcat-function).
const STRCAT_MAX: usize = 64;

/// Which rows a digest covers.
#[derive(Debug, Clone)]
pub enum DigestRows<'a> {
    /// A block at the source, selected exactly as its export selects it.
    SourceBlock { table: &'a Ident, window: &'a CursorWindow, range: &'a IngestionRange, user_query: Option<&'a UserQuery> },
    /// A block's counted extents in the staging table.
    StagingExtents { table: &'a Ident, extents: &'a [Uuid] },
}

/// What one side's digest query answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigest {
    pub rows: i64,
    /// `None`: the sum was null (no rows).
    pub row_hash: Option<i64>,
    /// (column name, sum of its value hashes), in the copy's column order.
    pub columns: Vec<(String, Option<i64>)>,
    /// Sums of the hashes of each column paired with the next (three columns or more).
    pub pairs: Vec<Option<i64>>,
}

impl ContentDigest {
    /// Where `staging` differs from `self` (the source), in words naming the column; `None`
    /// when every part is equal.
    pub fn difference(&self, staging: &ContentDigest) -> Option<String> {
        if self.rows != staging.rows {
            return Some(format!("the source has {} rows, staging {}", self.rows, staging.rows));
        }
        if self.columns.len() != staging.columns.len() {
            return Some(format!("the digests cover {} and {} columns", self.columns.len(), staging.columns.len()));
        }
        for ((name, a), (other, b)) in self.columns.iter().zip(&staging.columns) {
            if name != other {
                return Some(format!("the digests name column {name} and {other} in the same place"));
            }
            if a != b {
                return Some(format!("column {name} holds other values in staging than at the source"));
            }
        }
        let n = self.columns.len();
        let pair_differs = |i: usize| self.pairs.get(i) != staging.pairs.get(i);
        if self.row_hash != staging.row_hash || (0..n).any(pair_differs) {
            let suspects: Vec<&str> = if n >= 3 {
                (0..n).filter(|k| pair_differs((k + n - 1) % n) && pair_differs(*k)).map(|k| self.columns[k].0.as_str()).collect()
            } else {
                vec![]
            };
            let names: Vec<&str> = if suspects.is_empty() { self.columns.iter().map(|(n, _)| n.as_str()).collect() } else { suspects };
            let which = if names.len() == 1 { format!("column {}", names[0]) } else { format!("columns {}", names.join(", ")) };
            return Some(format!("{which}: the same values, but not in the same rows as at the source"));
        }
        None
    }
}

/// The value of column `c` as the text that is hashed (see the module docs).
fn as_text(c: &Column) -> Result<String, KustoError> {
    let q = Ident::new(c.name.clone())?.quoted();
    Ok(match c.kind {
        KustoType::String => q,
        KustoType::Dynamic => format!("tostring(pack_array({q}))"),
        _ => format!("iff(isnull({q}), 'n', strcat('v', tostring({q})))"),
    })
}

/// `strcat` of many parts, nested so no call takes more than 64 arguments.
fn strcat_all(parts: Vec<String>) -> String {
    if parts.len() <= STRCAT_MAX {
        return format!("strcat({})", parts.join(", "));
    }
    let groups: Vec<String> = parts.chunks(STRCAT_MAX).map(|g| format!("strcat({})", g.join(", "))).collect();
    strcat_all(groups)
}

/// The digest query of `rows` over `columns` (the columns the copy produces, in its order).
pub fn content_digest(rows: &DigestRows<'_>, columns: &[Column]) -> Result<Command, KustoError> {
    if columns.is_empty() {
        return Err(KustoError::invalid_input("a digest needs at least one column"));
    }
    let mut q = match rows {
        DigestRows::SourceBlock { table, window, range, user_query } => source_rows(table, window, Some(range), *user_query)?,
        DigestRows::StagingExtents { table, extents } => {
            if extents.is_empty() {
                return Err(KustoError::invalid_input("a staging digest needs the block's extent ids"));
            }
            let ids: Vec<String> = extents.iter().map(|id| format!("guid({id})")).collect();
            format!("{}\n| where extent_id() in ({})\n", table.quoted(), ids.join(", "))
        }
    };
    let hashes: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Ok(format!("kc_h{i} = hash_xxhash64({}, int({PRIME}))", as_text(c)?)))
        .collect::<Result<_, KustoError>>()?;
    q.push_str(&format!("| project {}\n", hashes.join(", ")));
    let mut joined = Vec::new();
    for i in 0..columns.len() {
        if i > 0 {
            joined.push("','".to_owned());
        }
        joined.push(format!("kc_h{i}"));
    }
    let n = columns.len();
    let mut extend = vec![format!("kc_row = hash_xxhash64({}, int({PRIME}))", strcat_all(joined))];
    let mut sums: Vec<String> = (0..n).map(|i| format!("C{i} = sum(kc_h{i})")).collect();
    if n >= 3 {
        for i in 0..n {
            extend.push(format!("kc_p{i} = hash_xxhash64(strcat(kc_h{i}, ',', kc_h{}), int({PRIME}))", (i + 1) % n));
            sums.push(format!("P{i} = sum(kc_p{i})"));
        }
    }
    q.push_str(&format!("| extend {}\n", extend.join(", ")));
    q.push_str(&format!("| summarize Rows = count(), RowHash = sum(kc_row), {}", sums.join(", ")));
    Ok(Command::from_query(q).strongly_consistent())
}

/// Reads a digest answer for `columns`.
pub fn read_digest(answer: &DataSet, columns: &[Column]) -> Result<ContentDigest, KustoError> {
    let table = answer.primary()?;
    let row = table.rows().next().ok_or_else(|| KustoError::protocol("the content digest answered no row"))?;
    let sums = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Ok((c.name.clone(), row.long(&format!("C{i}"))?)))
        .collect::<Result<Vec<_>, KustoError>>()?;
    let pairs = if columns.len() >= 3 { (0..columns.len()).map(|i| row.long(&format!("P{i}"))).collect::<Result<Vec<_>, KustoError>>()? } else { vec![] };
    Ok(ContentDigest { rows: row.required("Rows", Row::long)?, row_hash: row.long("RowHash")?, columns: sums, pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, kind: KustoType) -> Column {
        Column { name: name.into(), kind }
    }

    #[test]
    fn each_type_is_hashed_as_text_and_the_row_hash_joins_the_column_hashes() {
        let table = Ident::new("kc_staging_x").unwrap();
        let ids = [Uuid::from_u128(1)];
        let cols = [col("Name", KustoType::String), col("Bag", KustoType::Dynamic), col("At", KustoType::DateTime)];
        let q = content_digest(&DigestRows::StagingExtents { table: &table, extents: &ids }, &cols).unwrap();
        let text = q.expose_text();
        assert!(text.contains("| where extent_id() in (guid(00000000-0000-0000-0000-000000000001))"), "{text}");
        assert!(text.contains("kc_h0 = hash_xxhash64(['Name'], int(2147483647))"), "{text}");
        assert!(text.contains("kc_h1 = hash_xxhash64(tostring(pack_array(['Bag'])), int(2147483647))"), "{text}");
        assert!(text.contains("kc_h2 = hash_xxhash64(iff(isnull(['At']), 'n', strcat('v', tostring(['At']))), int(2147483647))"), "{text}");
        assert!(text.contains("kc_row = hash_xxhash64(strcat(kc_h0, ',', kc_h1, ',', kc_h2), int(2147483647))"), "{text}");
        assert!(text.contains("kc_p2 = hash_xxhash64(strcat(kc_h2, ',', kc_h0), int(2147483647))"), "{text}");
        assert!(!text.contains("hash("), "never the unstable hash()");
        assert!(content_digest(&DigestRows::StagingExtents { table: &table, extents: &[] }, &cols).is_err());
    }

    #[test]
    fn wide_tables_nest_strcat_within_its_argument_limit() {
        let parts: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let s = strcat_all(parts);
        assert!(s.starts_with("strcat(strcat(0, "), "{s}");
        for call in s.split("strcat(").skip(1) {
            let args = call.split(')').next().unwrap().split(", ").count();
            assert!(args <= STRCAT_MAX, "{args}");
        }
    }

    #[test]
    fn differences_name_the_part_that_differs() {
        let d = |rows, row, a, b| ContentDigest { rows, row_hash: Some(row), columns: vec![("A".into(), Some(a)), ("B".into(), Some(b))], pairs: vec![] };
        assert_eq!(d(2, 7, 1, 2).difference(&d(2, 7, 1, 2)), None);
        assert!(d(2, 7, 1, 2).difference(&d(3, 7, 1, 2)).unwrap().contains("rows"));
        assert!(d(2, 7, 1, 2).difference(&d(2, 9, 1, 5)).unwrap().contains("column B"));
        let swapped = d(2, 7, 1, 2).difference(&d(2, 8, 1, 2)).unwrap();
        assert!(swapped.starts_with("columns A, B: the same values, but not in the same rows"), "{swapped}");
        // Three columns: a move in column B changes the pairs (A, B) and (B, C) only.
        let wide = |row, pairs: [i64; 3]| ContentDigest {
            rows: 2,
            row_hash: Some(row),
            columns: vec![("A".into(), Some(1)), ("B".into(), Some(2)), ("C".into(), Some(3))],
            pairs: pairs.into_iter().map(Some).collect(),
        };
        assert_eq!(wide(7, [1, 2, 3]).difference(&wide(8, [5, 6, 3])).unwrap(), "column B: the same values, but not in the same rows as at the source");
    }
}
