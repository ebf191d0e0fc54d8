//! Parser for the management commands the simulator knows, on the KQL tokenizer.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::kql::lexer::Tok;
use crate::kql::parser::Parser;
use crate::kql::KqlError;
use crate::model::table::Column;
use crate::model::value::ScalarType;

/// `with (k = v, ...)` properties, keys in lower case, values as text.
pub type Props = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub enum ExtentSelector {
    All,
    Ids(Vec<Uuid>),
    /// `<| .show table T extents ...`: the extents that command lists.
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagFilter {
    pub op: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IngestMode {
    Append,
    Set,
    SetOrAppend,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    ShowTables,
    ShowDatabases,
    ShowTableDetails(Option<String>),
    ShowTableSchema(String),
    ShowTableExtents { table: String, ids: Option<Vec<Uuid>>, filters: Vec<TagFilter> },
    ShowTablePolicy { table: String, kind: String },
    ShowDatabasePolicy { database: String, kind: String },
    /// `.show table * policy K`: every table's policy of that kind.
    ShowAllTablesPolicy { kind: String },
    ShowMaterializedViews,
    ShowCluster,
    ShowCapacity,
    ShowOperations(Option<Vec<Uuid>>),
    ShowOperationDetails(Uuid),
    CreateTable { name: String, columns: Vec<Column>, props: Props, merge: bool },
    CreateTableBasedOn { name: String, source: String, if_not_exists: bool, props: Props },
    DropTable { name: String, if_exists: bool },
    AlterPolicy { table: Option<String>, kind: String, policy: serde_json::Value, merge: bool },
    DeletePolicy { table: Option<String>, kind: String },
    ExecuteScript { props: Props, commands: Vec<String> },
    Ingest { is_async: bool, table: String, sources: Vec<String>, props: Props },
    IngestInline { table: String, props: Props, data: String },
    SetOrAppend { is_async: bool, mode: IngestMode, table: String, props: Props, query: String },
    Export {
        is_async: bool,
        compressed: bool,
        format: String,
        targets: Vec<String>,
        props: Props,
        query: String,
    },
    MoveExtents { is_async: bool, from: Option<String>, to: String, selector: ExtentSelector, props: Props },
    DropExtentTags { table: String, tags: Vec<String>, props: Props },
    DropExtents { table: Option<String>, selector: ExtentSelector },
}

pub fn parse_command(src: &str) -> Result<Command, KqlError> {
    // Only the command head is tokenized: what follows `<|` (CSV data, a query, a script) is
    // taken raw, so data the KQL lexer would refuse can still be ingested.
    let head = &src[..head_end(src)];
    let mut p = Parser { tokens: crate::kql::lexer::tokenize(head)?, pos: 0, src };
    p.expect_punct(".")?;
    let verb = dashed_word(&mut p)?;
    let cmd = match verb.as_str() {
        "show" => show(&mut p)?,
        "create" | "create-merge" => create(&mut p, verb == "create-merge")?,
        "drop" => drop(&mut p)?,
        "alter" | "alter-merge" => {
            let (table, kind) = policy_target(&mut p)?;
            let policy = policy_value(&mut p)?;
            Command::AlterPolicy { table, kind, policy, merge: verb == "alter-merge" }
        }
        "delete" => {
            let (table, kind) = policy_target(&mut p)?;
            Command::DeletePolicy { table, kind }
        }
        "execute" => {
            p.expect_word("database")?;
            p.expect_word("script")?;
            let props = props(&mut p)?;
            let body = rest_after_pipe_arrow(&mut p)?;
            return Ok(Command::ExecuteScript { props, commands: split_script(&body) });
        }
        "ingest" => return ingest(&mut p),
        "set-or-append" | "append" | "set" => {
            let is_async = p.eat_word("async");
            let table = p.name()?;
            let props = props(&mut p)?;
            let query = rest_after_pipe_arrow(&mut p)?;
            let mode = match verb.as_str() {
                "append" => IngestMode::Append,
                "set" => IngestMode::Set,
                _ => IngestMode::SetOrAppend,
            };
            return Ok(Command::SetOrAppend { is_async, mode, table, props, query });
        }
        "export" => return export(&mut p),
        "move" => return move_extents(&mut p),
        _ => return Err(unknown_command(src)),
    };
    p.expect_eof()?;
    Ok(cmd)
}

/// The end of the first `<|` outside string literals (or the whole text).
fn head_end(src: &str) -> usize {
    let bytes = src.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'<' && bytes.get(i + 1) == Some(&b'|') => return i + 2,
            None => {}
        }
        i += 1;
    }
    src.len()
}

fn unknown_command(src: &str) -> KqlError {
    let head: String = super::redact(src.trim()).chars().take(40).collect();
    KqlError::Syntax(format!("SYN0002: unknown or unsupported management command: '{head}'"))
}

/// A word that may be spelled with dashes: `create-merge`, `set-or-append`.
fn dashed_word(p: &mut Parser<'_>) -> Result<String, KqlError> {
    let mut w = match p.advance() {
        Tok::Ident(w) => w.to_ascii_lowercase(),
        _ => return Err(p.unexpected()),
    };
    while p.is_punct("-") && matches!(p.peek_at(1), Tok::Ident(_)) {
        p.advance();
        if let Tok::Ident(next) = p.advance() {
            w.push('-');
            w.push_str(&next.to_ascii_lowercase());
        }
    }
    Ok(w)
}

fn show(p: &mut Parser<'_>) -> Result<Command, KqlError> {
    if p.eat_word("tables") {
        if p.eat_word("details") {
            return Ok(Command::ShowTableDetails(None));
        }
        return Ok(Command::ShowTables);
    }
    if p.eat_word("databases") {
        return Ok(Command::ShowDatabases);
    }
    if p.eat_word("cluster") {
        return Ok(Command::ShowCluster);
    }
    if p.eat_word("capacity") {
        return Ok(Command::ShowCapacity);
    }
    if p.eat_word("operations") {
        if p.is_punct("(") {
            return Ok(Command::ShowOperations(Some(guid_list(p)?)));
        }
        if matches!(p.peek(), Tok::Eof) {
            return Ok(Command::ShowOperations(None));
        }
        return Ok(Command::ShowOperations(Some(vec![single_guid(p)?])));
    }
    if p.eat_word("operation") {
        let id = single_guid(p)?;
        p.expect_word("details")?;
        return Ok(Command::ShowOperationDetails(id));
    }
    if p.eat_word("materialized") {
        p.expect_punct("-")?;
        p.expect_word("views")?;
        return Ok(Command::ShowMaterializedViews);
    }
    if p.is_word("table") && matches!(p.peek_at(1), Tok::Punct("*")) {
        p.advance();
        p.advance();
        p.expect_word("policy")?;
        return Ok(Command::ShowAllTablesPolicy { kind: policy_kind(p)? });
    }
    if p.eat_word("database") {
        let database = p.name()?;
        p.expect_word("policy")?;
        let kind = policy_kind(p)?;
        return Ok(Command::ShowDatabasePolicy { database, kind });
    }
    p.expect_word("table")?;
    let table = p.name()?;
    if p.eat_word("details") {
        return Ok(Command::ShowTableDetails(Some(table)));
    }
    if p.eat_word("cslschema") || p.eat_word("schema") {
        p.eat_word("as");
        p.eat_word("json");
        return Ok(Command::ShowTableSchema(table));
    }
    if p.eat_word("policy") {
        let kind = policy_kind(p)?;
        return Ok(Command::ShowTablePolicy { table, kind });
    }
    p.expect_word("extents")?;
    let ids = if p.is_punct("(") { Some(guid_list(p)?) } else { None };
    p.eat_word("hot");
    let mut filters = Vec::new();
    if p.eat_word("where") {
        loop {
            p.expect_word("tags")?;
            let negated = p.eat_punct("!");
            let op = match p.advance() {
                Tok::Ident(w) if ["has", "contains"].contains(&w.to_ascii_lowercase().as_str()) => w.to_ascii_lowercase(),
                _ => return Err(p.unexpected()),
            };
            let tag = string_literal(p)?;
            filters.push(TagFilter { op: if negated { format!("!{op}") } else { op }, tag });
            if !p.eat_word("and") {
                break;
            }
        }
    }
    Ok(Command::ShowTableExtents { table, ids, filters })
}

fn create(p: &mut Parser<'_>, merge: bool) -> Result<Command, KqlError> {
    p.expect_word("table")?;
    let name = p.name()?;
    if !merge && p.eat_word("based") {
        p.expect_punct("-")?;
        p.expect_word("on")?;
        let source = p.name()?;
        let if_not_exists = p.eat_word("ifnotexists");
        let props = props(p)?;
        return Ok(Command::CreateTableBasedOn { name, source, if_not_exists, props });
    }
    p.expect_punct("(")?;
    let mut columns = Vec::new();
    loop {
        let col = p.name()?;
        p.expect_punct(":")?;
        let ty_name = match p.advance() {
            Tok::Ident(t) => t,
            _ => return Err(p.unexpected()),
        };
        let ty = ScalarType::parse(&ty_name)
            .ok_or_else(|| KqlError::semantic(format!("SEM0001: unknown column type '{ty_name}' for column '{col}'")))?;
        columns.push(Column::new(col, ty));
        if !p.eat_punct(",") {
            break;
        }
    }
    p.expect_punct(")")?;
    let props = props(p)?;
    Ok(Command::CreateTable { name, columns, props, merge })
}

fn drop(p: &mut Parser<'_>) -> Result<Command, KqlError> {
    if p.eat_word("extents") || p.eat_word("extent") {
        if p.is_punct("<|") {
            p.advance();
            let rest = p.src[p.offset()..].trim().to_string();
            skip_to_end(p);
            return Ok(Command::DropExtents { table: None, selector: ExtentSelector::Command(rest) });
        }
        let selector = if p.is_punct("(") {
            ExtentSelector::Ids(guid_list(p)?)
        } else if !p.is_word("from") {
            ExtentSelector::Ids(vec![single_guid(p)?])
        } else {
            ExtentSelector::All
        };
        let table = if p.eat_word("from") { Some(p.name()?) } else { None };
        if selector == ExtentSelector::All && table.is_none() {
            return Err(p.unexpected());
        }
        return Ok(Command::DropExtents { table, selector });
    }
    p.expect_word("table")?;
    let name = p.name()?;
    if p.eat_word("extent") {
        p.expect_word("tags")?;
        p.expect_punct("(")?;
        let mut tags = vec![string_literal(p)?];
        while p.eat_punct(",") {
            tags.push(string_literal(p)?);
        }
        p.expect_punct(")")?;
        let props = props(p)?;
        return Ok(Command::DropExtentTags { table: name, tags, props });
    }
    let if_exists = p.eat_word("ifexists");
    Ok(Command::DropTable { name, if_exists })
}

fn policy_kind(p: &mut Parser<'_>) -> Result<String, KqlError> {
    match p.advance() {
        Tok::Ident(k) => Ok(k.to_ascii_lowercase()),
        _ => Err(p.unexpected()),
    }
}

/// `table T policy kind` or `database D policy kind`.
fn policy_target(p: &mut Parser<'_>) -> Result<(Option<String>, String), KqlError> {
    let table = if p.eat_word("table") {
        Some(p.name()?)
    } else {
        p.expect_word("database")?;
        p.name()?;
        None
    };
    p.expect_word("policy")?;
    Ok((table, policy_kind(p)?))
}

fn policy_value(p: &mut Parser<'_>) -> Result<serde_json::Value, KqlError> {
    if let Tok::Str { value, .. } = p.peek().clone() {
        p.advance();
        return serde_json::from_str(&value)
            .map_err(|e| KqlError::semantic(format!("SEM0001: the policy is not valid JSON: {e}")));
    }
    // Non-JSON forms such as `caching hot = 1d` are kept as their text.
    let rest = p.src[p.offset()..].trim().to_string();
    if rest.is_empty() {
        return Err(p.unexpected());
    }
    skip_to_end(p);
    Ok(serde_json::Value::String(rest))
}

fn ingest(p: &mut Parser<'_>) -> Result<Command, KqlError> {
    let is_async = p.eat_word("async");
    if p.eat_word("inline") {
        p.expect_word("into")?;
        p.expect_word("table")?;
        let table = p.name()?;
        let props = props(p)?;
        // As in Kusto's examples (`<| Shoes,1000`), the space after `<|` is not data.
        let data = rest_after_pipe_arrow_raw(p)?.trim_start().to_string();
        return Ok(Command::IngestInline { table, props, data });
    }
    p.expect_word("into")?;
    p.expect_word("table")?;
    let table = p.name()?;
    let sources = string_list(p)?;
    let props = props(p)?;
    p.expect_eof()?;
    Ok(Command::Ingest { is_async, table, sources, props })
}

fn export(p: &mut Parser<'_>) -> Result<Command, KqlError> {
    let is_async = p.eat_word("async");
    let compressed = p.eat_word("compressed");
    p.expect_word("to")?;
    let format = match p.advance() {
        Tok::Ident(f) => f.to_ascii_lowercase(),
        _ => return Err(p.unexpected()),
    };
    let targets = string_list(p)?;
    let props = props(p)?;
    let query = rest_after_pipe_arrow(p)?;
    Ok(Command::Export { is_async, compressed, format, targets, props, query })
}

fn move_extents(p: &mut Parser<'_>) -> Result<Command, KqlError> {
    let is_async = p.eat_word("async");
    p.expect_word("extents")?;
    let mut selector = None;
    if p.eat_word("all") {
        selector = Some(ExtentSelector::All);
    }
    let from = if p.eat_word("from") {
        p.expect_word("table")?;
        Some(p.name()?)
    } else {
        None
    };
    p.expect_word("to")?;
    p.expect_word("table")?;
    let to = p.name()?;
    let mut props = props(p)?;
    if p.is_punct("(") {
        selector = Some(ExtentSelector::Ids(guid_list(p)?));
        // The `with` clause may also follow the id list.
        props.extend(self::props(p)?);
    }
    if p.is_punct("<|") {
        p.advance();
        let rest = p.src[p.offset()..].trim().to_string();
        return Ok(Command::MoveExtents { is_async, from, to, selector: ExtentSelector::Command(rest), props });
    }
    p.expect_eof()?;
    let selector = selector.ok_or_else(|| p.unexpected())?;
    if from.is_none() {
        return Err(KqlError::Syntax("SYN0002: .move extents needs 'from table' unless it reads extents from a command after '<|'".into()));
    }
    Ok(Command::MoveExtents { is_async, from, to, selector, props })
}

fn string_literal(p: &mut Parser<'_>) -> Result<String, KqlError> {
    match p.peek().clone() {
        Tok::Str { value, .. } => {
            p.advance();
            Ok(value)
        }
        _ => Err(p.unexpected()),
    }
}

/// `('a', h'b', ...)`
fn string_list(p: &mut Parser<'_>) -> Result<Vec<String>, KqlError> {
    p.expect_punct("(")?;
    let mut out = vec![string_literal(p)?];
    while p.eat_punct(",") {
        out.push(string_literal(p)?);
    }
    p.expect_punct(")")?;
    Ok(out)
}

/// `(guid, guid, ...)`: GUIDs are written unquoted, so they are read as raw text.
fn guid_list(p: &mut Parser<'_>) -> Result<Vec<Uuid>, KqlError> {
    let open = p.offset();
    p.expect_punct("(")?;
    let mut depth = 1;
    while depth > 0 {
        match p.peek() {
            Tok::Punct("(") => depth += 1,
            Tok::Punct(")") => depth -= 1,
            Tok::Eof => return Err(p.unexpected()),
            _ => {}
        }
        if depth > 0 {
            p.advance();
        }
    }
    let close = p.offset();
    p.advance();
    let inner = &p.src[open + 1..close];
    inner
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
        .filter(|s| !s.is_empty())
        .map(|s| Uuid::parse_str(s).map_err(|_| KqlError::semantic(format!("SEM0001: '{s}' is not a valid GUID"))))
        .collect()
}

fn single_guid(p: &mut Parser<'_>) -> Result<Uuid, KqlError> {
    // Read raw text up to the next whitespace.
    let start = p.offset();
    let rest = &p.src[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let text = rest[..end].trim_matches(|c| c == '\'' || c == '"');
    let id = Uuid::parse_str(text).map_err(|_| KqlError::semantic(format!("SEM0001: '{text}' is not a valid GUID")))?;
    while !matches!(p.peek(), Tok::Eof) && p.offset() < start + end {
        p.advance();
    }
    Ok(id)
}

/// `with (k = v, ...)`, or nothing.
fn props(p: &mut Parser<'_>) -> Result<Props, KqlError> {
    let mut out = Props::new();
    if !p.eat_word("with") {
        return Ok(out);
    }
    p.expect_punct("(")?;
    loop {
        let key = match p.advance() {
            Tok::Ident(k) => k.to_ascii_lowercase(),
            _ => return Err(p.unexpected()),
        };
        p.expect_punct("=")?;
        let value = match p.advance() {
            Tok::Str { value, .. } => value,
            Tok::Ident(w) => w,
            Tok::Int(i) => i.to_string(),
            Tok::Real(r) => r.to_string(),
            Tok::TypedLiteral { text, .. } => text,
            _ => return Err(p.unexpected()),
        };
        out.insert(key, value);
        if !p.eat_punct(",") {
            break;
        }
    }
    p.expect_punct(")")?;
    Ok(out)
}

/// Consumes the remaining tokens (their text was taken raw).
fn skip_to_end(p: &mut Parser<'_>) {
    while !matches!(p.peek(), Tok::Eof) {
        p.advance();
    }
}

/// Everything after `<|`, trimmed.
fn rest_after_pipe_arrow(p: &mut Parser<'_>) -> Result<String, KqlError> {
    Ok(rest_after_pipe_arrow_raw(p)?.trim().to_string())
}

fn rest_after_pipe_arrow_raw(p: &mut Parser<'_>) -> Result<String, KqlError> {
    if !p.is_punct("<|") {
        return Err(p.unexpected());
    }
    let end = p.tokens[p.pos].end;
    let rest = p.src[end..].to_string();
    if rest.trim().is_empty() {
        return Err(p.error_here("expected text after '<|'"));
    }
    Ok(rest)
}

/// Splits a script into commands: each starts on a line beginning with `.`.
fn split_script(body: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in body.lines() {
        if line.trim_start().starts_with('.') || out.is_empty() {
            out.push(line.to_string());
        } else if let Some(last) = out.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands_a_copy_needs() {
        let id = crate::ids::new_uuid();
        assert_eq!(
            parse_command(&format!(".show operations ({id}, '{id}')")).unwrap(),
            Command::ShowOperations(Some(vec![id, id]))
        );
        assert_eq!(parse_command(&format!(".show operation {id} details")).unwrap(), Command::ShowOperationDetails(id));
        assert_eq!(
            parse_command(".show table ['kc-T-1'] extents where tags has 'drop-by:a' and tags !contains 'x'").unwrap(),
            Command::ShowTableExtents {
                table: "kc-T-1".into(),
                ids: None,
                filters: vec![
                    TagFilter { op: "has".into(), tag: "drop-by:a".into() },
                    TagFilter { op: "!contains".into(), tag: "x".into() }
                ]
            }
        );
        match parse_command(".create table T (a:string, ['b c']:long) with (folder='f')").unwrap() {
            Command::CreateTable { name, columns, props, merge } => {
                assert_eq!(name, "T");
                assert_eq!(columns[1], Column::new("b c", ScalarType::Long));
                assert_eq!(props["folder"], "f");
                assert!(!merge);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_command(".create table S based-on T with (folder='x')").unwrap(),
            Command::CreateTableBasedOn { name: "S".into(), source: "T".into(), if_not_exists: false, props: [("folder".to_string(), "x".to_string())].into() }
        );
        assert_eq!(parse_command(".drop table T ifexists").unwrap(), Command::DropTable { name: "T".into(), if_exists: true });
        assert_eq!(
            parse_command(".drop table T extent tags ('drop-by:a', 'b')").unwrap(),
            Command::DropExtentTags { table: "T".into(), tags: vec!["drop-by:a".into(), "b".into()], props: Props::new() }
        );
        match parse_command(".create table ['S'] based-on ['T'] ifnotexists with (folder='f')").unwrap() {
            Command::CreateTableBasedOn { if_not_exists, props, .. } => assert!(if_not_exists && props["folder"] == "f"),
            other => panic!("{other:?}"),
        }
        match parse_command(".drop table T extent tags ('a') with (extentCreatedOnFrom=datetime(2020-01-01), extentCreatedOnTo=datetime(2021-01-01))").unwrap() {
            Command::DropExtentTags { props, .. } => assert_eq!(props["extentcreatedonfrom"], "2020-01-01"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_ingest_export_and_move() {
        match parse_command(".ingest async into table T (h'https://a/b?sig=s') with (format='parquet', creationTime='2020-01-01', tags='[\"drop-by:x\"]')").unwrap() {
            Command::Ingest { is_async, sources, props, .. } => {
                assert!(is_async);
                assert_eq!(sources, vec!["https://a/b?sig=s"]);
                assert_eq!(props["creationtime"], "2020-01-01");
                assert_eq!(props["tags"], "[\"drop-by:x\"]");
            }
            other => panic!("{other:?}"),
        }
        match parse_command(".export async compressed to parquet (h'https://a/d?sig=s') with (namePrefix=\"p\", persistDetails=true) <| T | where a > 1").unwrap() {
            Command::Export { is_async, compressed, format, props, query, .. } => {
                assert!(is_async && compressed);
                assert_eq!(format, "parquet");
                assert_eq!(props["nameprefix"], "p");
                assert_eq!(query, "T | where a > 1");
            }
            other => panic!("{other:?}"),
        }
        let id = crate::ids::new_uuid();
        assert_eq!(
            parse_command(&format!(".move async extents from table A to table B with (setNewIngestionTime=true) ({id})")).unwrap(),
            Command::MoveExtents {
                is_async: true,
                from: Some("A".into()),
                to: "B".into(),
                selector: ExtentSelector::Ids(vec![id]),
                props: [("setnewingestiontime".to_string(), "true".to_string())].into()
            }
        );
        match parse_command(".move extents to table B <| .show table A extents where tags has 'x'").unwrap() {
            Command::MoveExtents { selector: ExtentSelector::Command(c), from: None, .. } => {
                assert_eq!(c, ".show table A extents where tags has 'x'")
            }
            other => panic!("{other:?}"),
        }
        match parse_command(".ingest inline into table T <| a#1,'1\nb & c,\"<|\"").unwrap() {
            Command::IngestInline { data, .. } => assert_eq!(data.trim(), "a#1,'1\nb & c,\"<|\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scripts_split_on_commands() {
        match parse_command(".execute database script with (ContinueOnErrors=true) <|\n.create table A (x:long)\n\n.alter table A policy merge\n'{}'").unwrap() {
            Command::ExecuteScript { commands, props } => {
                assert_eq!(commands.len(), 2);
                assert_eq!(props["continueonerrors"], "true");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_unknown_and_malformed_commands() {
        assert!(parse_command(".frobnicate everything").unwrap_err().is_syntax());
        assert!(parse_command(".show table").is_err());
        assert!(parse_command(".show operations (not-a-guid)").is_err());
        assert!(parse_command(".move extents from table A to table B").is_err());
    }
}
