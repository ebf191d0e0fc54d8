//! Replications declared in configuration (`KC_REPLICATIONS`): a JSON array of copy requests
//! in the `kc-requests` schema, each with a `name`. The scheduler keeps one job per name
//! (see `handler::replications`).
//!
//! A replication's job id is its name and a hash of its definition, so every instance that
//! reads the same settings names the same job, and a changed definition names a new one.

use serde_json::Value;

/// The longest name: the job id adds '-' and 12 hex digits within the 64 a job id may have.
const MAX_NAME: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub name: String,
    /// `<name>-<hash of the definition>`.
    pub job_id: String,
    /// The request as the job records it (the definition with `jobId` set).
    pub request: String,
}

/// Parses `KC_REPLICATIONS`. Only the shape is checked here; each request is validated as
/// any request is when its job is recorded, and a rejection shows in `status` under its id.
pub fn parse(text: &str) -> Result<Vec<Replication>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Array(items) = value else { return Err("must be a JSON array of copy requests, each with a \"name\"".into()) };
    let mut out: Vec<Replication> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut fields) = item else { return Err(format!("item {i} is not an object")) };
        let name = match fields.remove("name") {
            Some(Value::String(n)) => n,
            _ => return Err(format!("item {i} has no \"name\" (a string naming the replication)")),
        };
        let ok = (1..=MAX_NAME).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!("replication name '{name}' must be 1-{MAX_NAME} letters, digits, '-' or '_'"));
        }
        if fields.contains_key("jobId") {
            return Err(format!("replication '{name}' names a jobId; leave it out: the job id is the name and a hash of the definition"));
        }
        if out.iter().any(|r| r.name == name) {
            return Err(format!("replication name '{name}' is declared twice"));
        }
        // Keys sorted at every level, so the same definition hashes the same whatever order
        // its fields were written in (and whether or not serde_json keeps insertion order).
        let definition = canonical(&Value::Object(fields.clone()));
        let ns = uuid::Uuid::from_u128(0x6b63_7265_706c_4963_8a1b_2c3d_4e5f_6072);
        let hash = uuid::Uuid::new_v5(&ns, definition.as_bytes()).simple().to_string();
        let job_id = format!("{name}-{}", &hash[..12]);
        fields.insert("jobId".into(), Value::String(job_id.clone()));
        out.push(Replication { name, job_id, request: Value::Object(fields).to_string() });
    }
    Ok(out)
}

/// JSON text with object keys sorted at every level.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k]))).collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_definition_names_the_same_job_and_a_change_a_new_one() {
        let a = parse(r#"[{"name": "logs", "source": "s", "destination": "d", "copyMode": "BackfillAndNew"}]"#).unwrap();
        let reordered = parse(r#"[{"copyMode": "BackfillAndNew", "destination": "d", "name": "logs", "source": "s"}]"#).unwrap();
        assert_eq!(canonical(&serde_json::json!({"b": {"d": 1, "c": [{"f": 2, "e": 3}]}, "a": null})), r#"{"a":null,"b":{"c":[{"e":3,"f":2}],"d":1}}"#);
        let changed = parse(r#"[{"name": "logs", "source": "s", "destination": "d2", "copyMode": "BackfillAndNew"}]"#).unwrap();
        assert_eq!(a[0].job_id, reordered[0].job_id);
        assert_ne!(a[0].job_id, changed[0].job_id);
        assert!(a[0].job_id.starts_with("logs-") && a[0].job_id.len() == 17, "{}", a[0].job_id);
        let request: Value = serde_json::from_str(&a[0].request).unwrap();
        assert_eq!(request["jobId"], a[0].job_id.as_str());
        assert!(request.get("name").is_none());
    }

    #[test]
    fn malformed_declarations_say_what_is_wrong() {
        for (text, says) in [
            ("{}", "JSON array"),
            ("[1]", "not an object"),
            (r#"[{"source": "s"}]"#, "no \"name\""),
            (r#"[{"name": "a b"}]"#, "letters, digits"),
            (r#"[{"name": "a", "jobId": "x"}]"#, "jobId"),
            (r#"[{"name": "a"}, {"name": "a"}]"#, "twice"),
            ("[", "not valid JSON"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
