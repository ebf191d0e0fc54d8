//! Schema and policy commands: `.create[-merge] table`, `.create table ... based-on`,
//! `.drop table`, `.alter[-merge]`/`.delete ... policy`.

use super::frame;
use super::parse::Command;
use super::show::policy_frame;
use crate::kql::eval::Frame;
use crate::model::cluster::ClusterState;
use crate::model::table::Table;
use crate::model::value::{ScalarType as T, Value as V};
use crate::wire::error::KustoError;

fn schema_frame(db: &str, t: &Table) -> Frame {
    frame(
        &[("TableName", T::String), ("Schema", T::String), ("DatabaseName", T::String), ("Folder", T::String), ("DocString", T::String)],
        vec![vec![V::String(t.name.clone()), V::String(t.csl_schema()), V::String(db.into()), V::String(t.folder.clone()), V::String(t.docstring.clone())]],
    )
}

pub fn run(s: &mut ClusterState, db: &str, cmd: Command) -> Result<Frame, KustoError> {
    match cmd {
        Command::CreateTable { name, columns, props, merge } => {
            let d = s.database_mut(db)?;
            if let Some(t) = d.tables.get_mut(&name) {
                // `.create` of an identical table is a no-op; a different schema is an error.
                // `.create-merge` adds missing columns, and never changes existing ones' types.
                for c in &columns {
                    match t.columns.iter().find(|x| x.name == c.name) {
                        Some(x) if x.ty != c.ty => {
                            return Err(KustoError::bad_request(format!(
                                "Column '{}' of table '{name}' has type '{}', not '{}'",
                                c.name, x.ty, c.ty
                            )))
                        }
                        Some(_) => {}
                        None if merge => t.columns.push(c.clone()),
                        None => {
                            return Err(KustoError::bad_request(format!(
                                "Table '{name}' already exists with a different schema ({})",
                                t.csl_schema()
                            )))
                        }
                    }
                }
                if !merge && t.columns.len() != columns.len() {
                    return Err(KustoError::bad_request(format!(
                        "Table '{name}' already exists with a different schema ({})",
                        t.csl_schema()
                    )));
                }
                let t = t.clone();
                return Ok(schema_frame(db, &t));
            }
            let mut t = Table::new(name.clone(), columns);
            t.folder = props.get("folder").cloned().unwrap_or_default();
            t.docstring = props.get("docstring").cloned().unwrap_or_default();
            let f = schema_frame(db, &t);
            d.tables.insert(name, t);
            Ok(f)
        }
        Command::CreateTableBasedOn { name, source, if_not_exists, props } => {
            let d = s.database_mut(db)?;
            if d.tables.contains_key(&name) {
                // Documented: ignored with `ifnotexists`, an error without it.
                if !if_not_exists {
                    return Err(KustoError::bad_request(format!("Table '{name}' already exists")));
                }
                let t = d.tables[&name].clone();
                return Ok(schema_frame(db, &t));
            }
            let src = d.tables.get(&source).ok_or_else(|| KustoError::not_found("Table", &source))?;
            let mut t = Table::new(name.clone(), src.columns.clone());
            // Schema and policies are copied, except the update policy (documented).
            t.policies = src.policies.iter().filter(|(k, _)| k.as_str() != "update").map(|(k, v)| (k.clone(), v.clone())).collect();
            t.docstring = src.docstring.clone();
            t.folder = props.get("folder").cloned().unwrap_or_else(|| src.folder.clone());
            if let Some(doc) = props.get("docstring") {
                t.docstring = doc.clone();
            }
            let f = schema_frame(db, &t);
            d.tables.insert(name, t);
            Ok(f)
        }
        Command::DropTable { name, if_exists } => {
            let d = s.database_mut(db)?;
            if d.tables.remove(&name).is_none() && !if_exists {
                return Err(KustoError::not_found("Table", &name));
            }
            Ok(frame(
                &[("TableName", T::String), ("DatabaseName", T::String)],
                d.tables.keys().map(|n| vec![V::String(n.clone()), V::String(db.into())]).collect(),
            ))
        }
        Command::AlterPolicy { table, kind, policy, merge } => {
            let Some(table) = table else {
                let d = s.database_mut(db)?;
                d.policies.insert(kind, policy);
                return Ok(frame(&[("PolicyName", T::String)], vec![]));
            };
            let t = s.table_mut(db, &table)?;
            let value = match (merge, t.policies.get(&kind), policy) {
                (true, Some(serde_json::Value::Object(old)), serde_json::Value::Object(new)) => {
                    let mut merged = old.clone();
                    merged.extend(new);
                    serde_json::Value::Object(merged)
                }
                (_, _, p) => p,
            };
            t.policies.insert(kind.clone(), value);
            let t = t.clone();
            Ok(policy_frame(db, &t, &kind))
        }
        Command::DeletePolicy { table, kind } => {
            let Some(table) = table else {
                s.database_mut(db)?.policies.remove(&kind);
                return Ok(frame(&[("PolicyName", T::String)], vec![]));
            };
            let t = s.table_mut(db, &table)?;
            t.policies.remove(&kind);
            let t = t.clone();
            Ok(policy_frame(db, &t, &kind))
        }
        _ => unreachable!("not a schema command"),
    }
}
