//! Hostile names, values and queries cannot change a command's structure.
//!
//! The check is independent of the code under test: a small KQL lexer here splits command
//! text into string literals and everything else. A command built from a hostile value must
//! have exactly the same non-literal skeleton as one built from a plain value, and its
//! literal must decode back to the hostile value.

use kusto_copy::kusto::commands::{self, ExportRequest, IngestProperties};
use kusto_copy::kusto::{CursorWindow, ErrorKind, Ident, IngestionRange, SecretUrl, UserQuery};
use time::macros::datetime;

const HOSTILE: &[&str] = &[
    "a'b",
    "a\"b",
    "a\\",
    "\\'; .drop table T",
    "x' | take 1 //",
    "line1\nline2",
    "cr\rtab\t",
    "[']",
    "a] ; .drop database D <| print 1",
    "'')) <| .drop table T",
    "h'nested'",
    "@'verbatim'",
    "```",
    "// comment",
    "ünïcödé ✓",
];

/// Splits text into (skeleton, literals): each string literal is replaced by `'?'` (or
/// `h'?'`) in the skeleton and decoded into the list.
fn lex(text: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = text.chars().collect();
    let mut skeleton = String::new();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let obfuscated = (c == 'h' || c == 'H') && matches!(chars.get(i + 1), Some('\'') | Some('"'))
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        if c == '\'' || c == '"' || obfuscated {
            if obfuscated {
                skeleton.push('h');
                i += 1;
            }
            let quote = chars[i];
            i += 1;
            let mut value = String::new();
            loop {
                let ch = *chars.get(i).unwrap_or_else(|| panic!("unterminated literal in {text:?}"));
                assert!(ch != '\n' && ch != '\r', "raw line break inside a literal in {text:?}");
                if ch == '\\' {
                    let esc = chars[i + 1];
                    value.push(match esc {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        other => other,
                    });
                    i += 2;
                } else if ch == quote {
                    i += 1;
                    break;
                } else {
                    value.push(ch);
                    i += 1;
                }
            }
            skeleton.push_str("'?'");
            literals.push(value);
        } else {
            skeleton.push(c);
            i += 1;
        }
    }
    (skeleton, literals)
}

fn table() -> Ident {
    Ident::new("Events").unwrap()
}

/// Builds with `value` and with a plain value; the skeletons must match and the hostile
/// literal must decode to itself.
fn assert_structure_holds(build: impl Fn(&str) -> String) {
    assert_structure_holds_as(build, |v| v.to_string())
}

/// As above, for a value that travels encoded (`literal_of` gives the literal's content).
fn assert_structure_holds_as(build: impl Fn(&str) -> String, literal_of: impl Fn(&str) -> String) {
    let (plain_skeleton, _) = lex(&build("plain"));
    for value in HOSTILE {
        let text = build(value);
        let (skeleton, literals) = lex(&text);
        assert_eq!(skeleton, plain_skeleton, "{value:?} changed the structure:\n{text}");
        assert!(
            literals.iter().any(|l| *l == literal_of(value)),
            "{value:?} did not survive as a literal: {literals:?} in\n{text}"
        );
    }
}

#[test]
fn identifiers_are_validated_and_bracket_quoted() {
    for bad in [
        "a'b", "a\"b", "a]b", "a[b", "a\nb", "a|b", "a;b", "a<|b", "T | take 1", "", " lead",
        "trail ", "a\\b", "a/b", "a(b)", "a{b}", "a,b", "a=b",
    ] {
        let err = Ident::new(bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{bad:?}");
    }
    assert!(Ident::new("x".repeat(1025)).is_err());
    let ok = Ident::new("My Table-1.v2_ü").unwrap();
    assert_eq!(ok.quoted(), "['My Table-1.v2_ü']");
    assert_eq!(
        commands::drop_table(&ok).expose_text(),
        ".drop table ['My Table-1.v2_ü'] ifexists"
    );
}

#[test]
fn tags_cursors_and_names_stay_literals() {
    assert_structure_holds(|v| commands::show_extents(&table(), Some(v)).unwrap().expose_text().to_string());
    assert_structure_holds(|v| commands::count_rows_with_tag(&table(), v).unwrap().expose_text().to_string());
    assert_structure_holds(|v| {
        commands::drop_extent_tags(&table(), &["drop-by:ok", v], None).unwrap().expose_text().to_string()
    });
    assert_structure_holds(|v| commands::drop_extents_with_tag(&table(), v).unwrap().expose_text().to_string());
    assert_structure_holds(|v| {
        commands::move_extents_with_tag(&table(), &Ident::new("Dest").unwrap(), v, true)
            .unwrap()
            .expose_text()
            .to_string()
    });
    assert_structure_holds(|v| {
        commands::create_table_based_on(&Ident::new("kc-stage").unwrap(), &table(), Some(v))
            .unwrap()
            .expose_text()
            .to_string()
    });
    // Cursors are opaque strings from the service; still never trusted.
    assert_structure_holds(|v| {
        let window = CursorWindow { from: Some(v.to_string()), to: v.to_string() };
        commands::row_counts_by_ingestion_bin(&table(), &window, None, std::time::Duration::from_secs(3600))
            .unwrap()
            .expose_text()
            .to_string()
    });
    assert_structure_holds(|v| {
        let dest = [SecretUrl::parse("https://acct.blob.core.windows.net/c/f?sig=S").unwrap()];
        let window = CursorWindow { from: None, to: "c".into() };
        commands::export_parquet(&ExportRequest {
            table: &table(),
            window: &window,
            range: None,
            user_query: None,
            destinations: &dest,
            name_prefix: v,
        })
        .unwrap()
        .expose_text()
        .to_string()
    });
    assert_structure_holds_as(|v| {
        let blob = [SecretUrl::parse("https://acct.blob.core.windows.net/c/f.parquet?sig=S").unwrap()];
        let props = IngestProperties { tags: vec![v.to_string()], ..IngestProperties::parquet() };
        let text = commands::ingest_async(&table(), &blob, &props).unwrap().expose_text().to_string();
        // The tags travel as JSON inside a literal; decode the JSON too.
        let (_, literals) = lex(&text);
        let tags: Vec<String> = serde_json::from_str(literals.last().unwrap()).unwrap();
        assert_eq!(tags, vec![v.to_string()]);
        text
    }, |v| serde_json::to_string(&[v]).unwrap());
}

#[test]
fn control_characters_without_an_escape_are_refused() {
    let err = commands::show_extents(&table(), Some("bell\u{7}")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
}

#[test]
fn user_queries_that_could_escape_are_refused() {
    for bad in [
        "| take 1; .drop table Events",
        "; .drop table Events",
        ".drop table Events",
        "  .show tables",
        "| where x == 1 <| .drop table T",
        "| where Name == 'unterminated",
        "| where Name == \"unterminated",
        "| where Name == 'broken\nline'",
        "| where f(x",
        "| where x)",
        "| project a] ",
        "| extend s = ```open",
        "| where Name == @'verbatim",
    ] {
        let err = UserQuery::new(bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[test]
fn accepted_user_queries_stay_in_their_place() {
    let tricky = [
        "| where Name == 'a;b<|c' and Other != \"x)\"",
        "| where Name has @'C:\\path' // trailing comment; with <| and ) inside",
        "| extend s = ```multi;line\n<|```",
        "| where A in ('x', 'y')\n| project A, B = strcat(A, ']')",
    ];
    let window = CursorWindow { from: Some("c0".into()), to: "c1".into() };
    let dest = [SecretUrl::parse("https://acct.blob.core.windows.net/c/f?sig=S").unwrap()];
    for text in tricky {
        let q = UserQuery::new(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let count = commands::row_counts_by_ingestion_bin(&table(), &window, Some(&q), std::time::Duration::from_secs(60))
            .unwrap();
        let body = count.expose_text();
        // The user text sits on its own lines, and our summarize starts a fresh line after it,
        // so even a trailing comment cannot swallow it.
        assert!(body.contains(&format!("\n{text}\n| summarize ")), "{body}");
        let export = commands::export_parquet(&ExportRequest {
            table: &table(),
            window: &window,
            range: Some(&IngestionRange {
                from: datetime!(2024-01-01 00:00 UTC),
                to: datetime!(2024-01-01 01:00 UTC),
            }),
            user_query: Some(&q),
            destinations: &dest,
            name_prefix: "b1",
        })
        .unwrap();
        let body = export.expose_text();
        assert!(body.ends_with(&format!("\n{text}\n")), "{body}");
    }
}

#[test]
fn the_exact_text_of_each_builder() {
    let t = table();
    let dest = Ident::new("Dest Table").unwrap();
    let id = uuid::Uuid::parse_str("2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f").unwrap();
    let window = CursorWindow { from: Some("c0".into()), to: "c1".into() };
    assert_eq!(commands::cursor_current().expose_text(), "print Cursor=cursor_current()");
    assert_eq!(
        commands::show_extents(&t, Some("drop-by:kc-1")).unwrap().expose_text(),
        ".show table ['Events'] extents where tags has 'drop-by:kc-1'"
    );
    assert_eq!(
        commands::show_operations(&[id, id]).unwrap().expose_text(),
        ".show operations (2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f, 2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f)"
    );
    assert_eq!(
        commands::show_operation_details(id).expose_text(),
        ".show operation 2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f details"
    );
    assert_eq!(commands::show_capacity().expose_text(), ".show capacity");
    assert_eq!(commands::show_tables().expose_text(), ".show tables");
    assert_eq!(
        commands::create_table_based_on(&Ident::new("kc-Events-1").unwrap(), &t, Some("kc"))
            .unwrap()
            .expose_text(),
        ".create table ['kc-Events-1'] based-on ['Events'] ifnotexists with (folder='kc')"
    );
    assert_eq!(
        commands::disable_merges(&t).unwrap().expose_text(),
        r#".alter table ['Events'] policy merge '{"AllowRebuild": false, "AllowMerge": false}'"#
    );
    assert_eq!(
        commands::delete_partitioning_policy(&t).expose_text(),
        ".delete table ['Events'] policy partitioning"
    );
    assert_eq!(
        commands::delete_extent_tags_retention_policy(&t).expose_text(),
        ".delete table ['Events'] policy extent_tags_retention"
    );
    assert_eq!(
        commands::move_extents(&t, &dest, &[id], false).unwrap().expose_text(),
        ".move extents from table ['Events'] to table ['Dest Table'] with (setNewIngestionTime=true) (2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f)"
    );
    assert_eq!(
        commands::move_extents_with_tag(&t, &dest, "drop-by:kc-1", true).unwrap().expose_text(),
        ".move async extents to table ['Dest Table'] with (setNewIngestionTime=true) <|\n.show table ['Events'] extents where tags has 'drop-by:kc-1'"
    );
    assert_eq!(
        commands::drop_extent_tags(
            &t,
            &["drop-by:kc-1"],
            Some((datetime!(2024-01-01 00:00 UTC), datetime!(2024-01-02 00:00 UTC)))
        )
        .unwrap()
        .expose_text(),
        ".drop table ['Events'] extent tags ('drop-by:kc-1') with (extentCreatedOnFrom=datetime(2024-01-01T00:00:00.0000000Z), extentCreatedOnTo=datetime(2024-01-02T00:00:00.0000000Z))"
    );
    assert_eq!(
        commands::drop_extents(&t, &[id]).unwrap().expose_text(),
        ".drop extents (2f1c5a3e-4b1d-4a6c-9d7e-0a1b2c3d4e5f) from ['Events']"
    );
    assert_eq!(
        commands::drop_extents_with_tag(&t, "drop-by:kc-1").unwrap().expose_text(),
        ".drop extents <|\n.show table ['Events'] extents where tags has 'drop-by:kc-1'"
    );
    assert_eq!(
        commands::count_rows_with_tag(&t, "drop-by:kc-1").unwrap().expose_text(),
        "['Events']\n| where set_has_element(extent_tags(), 'drop-by:kc-1')\n| count"
    );
    assert_eq!(
        commands::row_counts_by_ingestion_bin(&t, &window, None, std::time::Duration::from_secs(3600))
            .unwrap()
            .expose_text(),
        "['Events']\n| where cursor_after('c0') and cursor_before_or_at('c1')\n\
         | summarize RowCount = count(), MinIngestionTime = min(ingestion_time()), \
         MaxIngestionTime = max(ingestion_time()) by IngestionTimeBin = bin(ingestion_time(), 3600s), \
         ExtentId = tostring(extent_id())\n| order by IngestionTimeBin asc"
    );
}

#[test]
fn secrets_reach_the_body_only() {
    let sas = "https://acct.blob.core.windows.net/staging/job/b1?sv=2022-11-02&se=2030-01-01&sp=rwl&sig=TOPSECRET%3D";
    let dest = [SecretUrl::parse(sas).unwrap()];
    let window = CursorWindow { from: None, to: "c1".into() };
    let export = commands::export_parquet(&ExportRequest {
        table: &table(),
        window: &window,
        range: Some(&IngestionRange {
            from: datetime!(2024-01-01 00:00 UTC),
            to: datetime!(2024-01-01 01:00 UTC),
        }),
        user_query: None,
        destinations: &dest,
        name_prefix: "b1",
    })
    .unwrap();
    assert!(!export.is_repeatable());
    assert_eq!(
        export.expose_text(),
        format!(
            ".export async compressed to parquet (h'{sas}') with (namePrefix='b1', persistDetails=true, \
             distribution='per_node', parquetDatetimePrecision='microsecond') <|\n['Events']\n\
             | where cursor_before_or_at('c1')\n\
             | where ingestion_time() >= datetime(2024-01-01T00:00:00.0000000Z) and ingestion_time() < datetime(2024-01-01T01:00:00.0000000Z)\n"
        )
    );
    for shown in [export.redacted().to_string(), format!("{export:?}"), format!("{export}"), format!("{:?}", dest[0]), dest[0].to_string()] {
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(!shown.contains("sig="), "{shown}");
    }
    assert!(export
        .redacted()
        .contains("h'https://acct.blob.core.windows.net/staging/job/b1?<redacted>'"));

    let ingest = commands::ingest_async(
        &table(),
        &dest,
        &IngestProperties {
            creation_time: Some(datetime!(2023-06-01 00:00 UTC)),
            tags: vec!["drop-by:kc-1".into()],
            ..IngestProperties::parquet()
        },
    )
    .unwrap();
    assert_eq!(
        ingest.expose_text(),
        format!(
            ".ingest async into table ['Events'] (h'{sas}') with (format='parquet', \
             creationTime='2023-06-01T00:00:00.0000000Z', tags='[\"drop-by:kc-1\"]')"
        )
    );
    assert!(!format!("{ingest:?}").contains("TOPSECRET"));
    // A bad URL's error does not echo it.
    let err = SecretUrl::parse("not a url?sig=TOPSECRET").unwrap_err();
    assert!(!err.to_string().contains("TOPSECRET"));
}
