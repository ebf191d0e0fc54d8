//! `kc validate --connect`: reaches every cluster and staging account a job names, with the
//! credential the copy will use, and checks what the copy will need, before anything is
//! exported. Every probe is read-only or undone at once (a probe table and a probe container
//! are created and dropped). A refusal is turned into the role that is missing.
//!
//! What the answers look like:
//! - Kusto refuses a principal with HTTP 403 and an `UnauthorizedOperationException` whose
//!   message reads "Principal '…' is not authorized to perform operation '…'" (as the
//!   service answers; seen for example in microsoft/finops-toolkit discussion 1977). 401 means
//!   the token itself was not accepted (another tenant, or the wrong audience).
//! - Azure Storage answers 403 `AuthorizationPermissionMismatch` when the identity is known
//!   but lacks the data role, and 403 `AuthorizationFailure` when the request is refused
//!   before roles are looked at (firewall, private endpoint, shared-key-only): "Blob service
//!   error codes", learn.microsoft.com/rest/api/storageservices/blob-service-error-codes.

use crate::engine::copy::Connections;
use crate::job::{Activity, JobSpec};
use crate::kusto::{commands, ClientRequestId, ErrorKind, Ident, KustoError, UserQuery};
use crate::storage::StorageError;

/// One thing checked, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub subject: String,
    /// What was confirmed, or what is wrong and what to do.
    pub outcome: Result<String, String>,
}

/// Which Kusto role a database needs for its part in the copy (docs/deploy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KustoRole {
    /// Source databases: queries, `.show`, `.export`.
    Viewer,
    /// Destination databases: staging tables and their policies, `.move extents`, tag drops.
    Admin,
}

/// What to do about a Kusto error met while checking `database` on `cluster`.
pub fn kusto_advice(e: &KustoError, cluster: &str, database: &str, role: KustoRole) -> String {
    let text = format!("{} {}", e.code.as_deref().unwrap_or_default(), e.message);
    let (role_name, add) = match role {
        KustoRole::Viewer => ("viewer", "viewers"),
        KustoRole::Admin => ("admin", "admins"),
    };
    if e.status == Some(403) || text.contains("UnauthorizedOperationException") || text.contains("is not authorized to perform") {
        return format!(
            "the identity is not a database {role_name} of {database} on {cluster}: run `.add database ['{database}'] {add} ('aadapp=<client id>;<tenant id>')` \
             there (or list the database in the Bicep adxDatabases parameter). Kusto said: {}",
            e.message
        );
    }
    if e.status == Some(401) || e.kind == ErrorKind::Unauthorized {
        return format!(
            "{cluster} did not accept the token (HTTP 401): the identity must be in the cluster's tenant, and the cluster URI exactly the cluster's (no alias). Kusto said: {}",
            e.message
        );
    }
    if e.kind == ErrorKind::Connect {
        return format!("cannot reach {cluster}: {} (a private endpoint or firewall the app cannot cross?)", e.message);
    }
    e.to_string()
}

/// What to do about a Storage error met while checking the staging `account`.
pub fn storage_advice(e: &StorageError, account: &str) -> String {
    let text = e.to_string();
    if text.contains("AuthorizationPermissionMismatch") {
        return format!(
            "the identity lacks Storage Blob Data Contributor on the staging account {account} (account scope: the copy creates a container per block and asks for user delegation keys): {text}"
        );
    }
    if text.contains("AuthorizationFailure") {
        return format!(
            "the staging account {account} refused the request before looking at roles: its firewall, a private endpoint, or shared-key-only access (allowSharedKeyAccess is not the issue; Entra sign-in must be allowed): {text}"
        );
    }
    if text.contains("HTTP 403") {
        return format!("the staging account {account} refused the identity: grant it Storage Blob Data Contributor at account scope: {text}");
    }
    text
}

fn rid(what: &str) -> ClientRequestId {
    ClientRequestId::new(what, "validate", "connect", 1)
}

/// Every check of the job, in order; all run, whatever fails.
pub async fn check(spec: &JobSpec, connections: &dyn Connections) -> Vec<Check> {
    let mut out = Vec::new();
    for activity in &spec.activities {
        check_activity(activity, spec.create_destination_table, connections, &mut out).await;
    }
    for staging in &spec.staging {
        let account = crate::storage::sas::account_name(&staging.account_url.parse().expect("validated staging URL"));
        let subject = format!("staging account {account}");
        let outcome = match connections.staging(&staging.account_url) {
            Err(e) => Err(e.to_string()),
            Ok(s) => probe_staging(s.as_ref(), &account).await,
        };
        out.push(Check { subject, outcome });
    }
    out
}

async fn check_activity(activity: &Activity, create_missing: bool, connections: &dyn Connections, out: &mut Vec<Check>) {
    let (src, dst) = (&activity.source, &activity.destination);
    let subject = |what: &str| format!("{}: {what}", activity.name);
    let (Ok(table), Ok(dest_table)) = (Ident::new(&src.table), Ident::new(&dst.table)) else {
        out.push(Check { subject: subject("names"), outcome: Err("a table name is not a valid identifier".into()) });
        return;
    };
    let query = match activity.query.as_deref().map(UserQuery::new).transpose() {
        Ok(q) => q,
        Err(e) => {
            out.push(Check { subject: subject("query"), outcome: Err(e.to_string()) });
            return;
        }
    };

    // The source: the rows the copy reads, the cursor it windows them by, its export capacity.
    let produced = match connections.kusto(&src.cluster) {
        Err(e) => {
            out.push(Check { subject: subject("source"), outcome: Err(e.to_string()) });
            None
        }
        Ok(source) => {
            let read = source.execute(&src.database, &commands::result_schema(&table, query.as_ref()), &rid("schema")).await;
            let produced = read.as_ref().ok().and_then(|a| a.primary().ok()).map(|t| t.columns.clone());
            out.push(Check {
                subject: subject(&format!("read {}.{} on {}", src.database, src.table, src.cluster)),
                outcome: match &read {
                    Ok(_) => Ok(format!("the copy produces {} columns", produced.as_ref().map_or(0, Vec::len))),
                    Err(e) => Err(kusto_advice(e, &src.cluster, &src.database, KustoRole::Viewer)),
                },
            });
            if read.is_ok() {
                let cursor = source.execute(&src.database, &commands::cursor_current(), &rid("cursor")).await;
                out.push(Check {
                    subject: subject("source cursor (copy since last copy)"),
                    outcome: cursor.map(|_| "readable".into()).map_err(|e| kusto_advice(&e, &src.cluster, &src.database, KustoRole::Viewer)),
                });
                // Not fatal: without it the job's exportCount alone limits exports.
                let capacity = source.execute(&src.database, &commands::show_capacity(), &rid("capacity")).await;
                out.push(Check {
                    subject: subject("source export capacity"),
                    outcome: Ok(match capacity.and_then(|a| crate::kusto::results::capacities(&a)) {
                        Ok(caps) => caps
                            .iter()
                            .find(|c| c.resource == "DataExport")
                            .map_or("not reported".into(), |c| format!("{} exports at once across all jobs", c.total)),
                        Err(e) => format!("unknown ({}); exportCount alone limits exports", e.message),
                    }),
                });
            }
            produced
        }
    };

    // The destination: the table (and its schema), and the right to make staging tables.
    let Ok(dest) = connections.kusto(&dst.cluster) else {
        out.push(Check { subject: subject("destination"), outcome: Err(format!("cannot reach {}", dst.cluster)) });
        return;
    };
    let where_ = format!("{}.{} on {}", dst.database, dst.table, dst.cluster);
    let tables = dest.execute(&dst.database, &commands::show_tables(), &rid("tables")).await.and_then(|a| crate::kusto::results::table_names(&a));
    let outcome = match tables {
        Err(e) => Err(kusto_advice(&e, &dst.cluster, &dst.database, KustoRole::Admin)),
        Ok(names) if !names.iter().any(|n| n == dest_table.as_str()) => {
            if create_missing {
                Ok("missing; the job creates it (createDestinationTable)".into())
            } else {
                Err("missing: create it with the schema the copy produces, or set createDestinationTable".into())
            }
        }
        Ok(_) => match dest.execute(&dst.database, &commands::result_schema(&dest_table, None), &rid("dest-schema")).await {
            Err(e) => Err(kusto_advice(&e, &dst.cluster, &dst.database, KustoRole::Admin)),
            Ok(answer) => {
                let accepted = answer.primary().map(|t| t.columns.clone()).unwrap_or_default();
                match produced.as_ref().and_then(|p| crate::engine::plan::schema_mismatch(p, &accepted)) {
                    Some(problem) => Err(format!("cannot take this copy: {problem}")),
                    None => Ok("exists and takes the copy's columns".into()),
                }
            }
        },
    };
    out.push(Check { subject: subject(&format!("destination table {where_}")), outcome });
    out.push(Check { subject: subject(&format!("what runs on rows moved into {where_}")), outcome: downstream(dest.as_ref(), &dst.database, dest_table.as_str()).await });

    let probe = format!("kc_probe_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let probe_ident = Ident::new(&probe).expect("a valid name");
    let created = match commands::create_table(&probe_ident, &[crate::kusto::Column { name: "x".into(), kind: crate::kusto::KustoType::Int }]) {
        Ok(cmd) => dest.execute(&dst.database, &cmd, &rid("probe-create")).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let outcome = match created {
        Ok(()) => match dest.execute(&dst.database, &commands::drop_table(&probe_ident), &rid("probe-drop")).await {
            Ok(_) => Ok("can create and drop staging tables".into()),
            Err(e) => Err(format!("created the probe table {probe} but could not drop it (drop it by hand): {}", kusto_advice(&e, &dst.cluster, &dst.database, KustoRole::Admin))),
        },
        Err(e) => Err(kusto_advice(&e, &dst.cluster, &dst.database, KustoRole::Admin)),
    };
    out.push(Check { subject: subject(&format!("staging tables in {} on {}", dst.database, dst.cluster)), outcome });
}

/// The destination's own machinery that sees the copied rows: an update policy whose source
/// is the destination table runs on `.move extents` into it (shared/reference/kusto.md), and
/// a materialized view over it aggregates the moved extents as new data. Neither stops the
/// copy; both are named, so nobody is surprised by rows that appear in other tables.
async fn downstream(dest: &dyn crate::kusto::KustoApi, database: &str, table: &str) -> Result<String, String> {
    use crate::kusto::results;
    let policies = dest.execute(database, &commands::show_update_policies(), &rid("update-policies")).await.and_then(|a| results::update_policies(&a));
    let views = dest.execute(database, &commands::show_materialized_views(), &rid("materialized-views")).await.and_then(|a| results::materialized_views(&a));
    let mut found = Vec::new();
    match policies {
        Ok(p) => found.extend(p.into_iter().filter(|p| p.source == table).map(|p| format!("the update policy of table {} runs on every block moved in and writes its own rows there", p.table))),
        Err(e) => found.push(format!("update policies not readable ({})", e.message)),
    }
    match views {
        Ok(v) => found.extend(v.into_iter().filter(|(_, source)| source == table).map(|(name, _)| format!("materialized view {name} aggregates the copied rows as new data"))),
        Err(e) => found.push(format!("materialized views not readable ({})", e.message)),
    }
    Ok(if found.is_empty() {
        "no update policy or materialized view reads it".into()
    } else {
        format!("warning: {}; disable them for the copy if the destination already holds their results (README, \"The destination's own machinery\")", found.join("; "))
    })
}

/// A user delegation key (for the SAS Kusto gets) and a container made and removed (one per
/// block attempt in the copy).
async fn probe_staging(staging: &dyn crate::storage::staging::StagingStore, account: &str) -> Result<String, String> {
    let name = format!("kcs-probe-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    staging
        .folder_url(&name, crate::storage::sas::Access::IngestRead, time::Duration::minutes(5))
        .await
        .map_err(|e| storage_advice(&e, account))?;
    staging.create_folder(&name).await.map_err(|e| storage_advice(&e, account))?;
    staging.delete_folder(&name).await.map_err(|e| storage_advice(&e, account))?;
    Ok("user delegation key, and a container created and deleted".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kusto(status: u16, message: &str) -> KustoError {
        KustoError {
            kind: if status == 401 || status == 403 { ErrorKind::Unauthorized } else { ErrorKind::BadRequest },
            status: Some(status),
            code: Some(if status == 403 { "Forbidden".into() } else { "Unauthorized".into() }),
            message: message.into(),
            activity_id: None,
            client_request_id: None,
            permanent: Some(true),
            retry_after: None,
        }
    }

    #[test]
    fn a_kusto_refusal_names_the_role_and_the_command_that_grants_it() {
        // The body Kusto sends a principal without rights (UnauthorizedOperationException).
        let e = kusto(403, "Principal 'aadapp=820068b2-f979-4cc9-8e30-5aa1321cfea6;289321e0-9db6-4644-b371-956e6056d9eb' is not authorized to perform operation 'Access the Kusto service' on 'https://x.kusto.windows.net'");
        let source = kusto_advice(&e, "https://x.kusto.windows.net", "Sales", KustoRole::Viewer);
        assert!(source.contains("not a database viewer of Sales") && source.contains(".add database ['Sales'] viewers ('aadapp="), "{source}");
        let dest = kusto_advice(&e, "https://y.kusto.windows.net", "Copy", KustoRole::Admin);
        assert!(dest.contains("not a database admin of Copy") && dest.contains("admins"), "{dest}");
        let token = kusto_advice(&kusto(401, "Unauthorized"), "https://x.kusto.windows.net", "Sales", KustoRole::Viewer);
        assert!(token.contains("did not accept the token") && token.contains("tenant"), "{token}");
    }

    #[test]
    fn a_storage_refusal_names_the_role_or_the_network() {
        let mismatch = StorageError::Permanent { what: "create the probe container".into(), detail: "HTTP 403 AuthorizationPermissionMismatch".into() };
        let advice = storage_advice(&mismatch, "stg");
        assert!(advice.contains("Storage Blob Data Contributor on the staging account stg"), "{advice}");
        let network = StorageError::Permanent { what: "get user delegation key".into(), detail: "HTTP 403 AuthorizationFailure".into() };
        assert!(storage_advice(&network, "stg").contains("firewall"));
    }
}
