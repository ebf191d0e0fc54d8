//! The custom handler wire format: what the Functions host POSTs to `/{function}` and what it
//! expects back.
//!
//! The host's shapes have quirks (see `shared/reference/functions-host.md`): queue text
//! arrives JSON-encoded a second time, numbers in metadata arrive as strings, string metadata
//! may keep its own quotes, byte payloads arrive as base64. Everything here is lenient about
//! those and strict about what actually matters.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"Data": {...}, "Metadata": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Invocation {
    #[serde(rename = "Data", default)]
    pub data: Map<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: Map<String, Value>,
}

/// `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InvocationResult {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl Invocation {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("invocation body is not JSON: {e}"))?;
        if !value.is_object() {
            return Err("invocation body must be a JSON object with Data and Metadata".into());
        }
        serde_json::from_value(value).map_err(|e| format!("invocation body: {e}"))
    }

    pub fn binding(&self, name: &str) -> Result<&Value, String> {
        self.data.get(name).ok_or_else(|| {
            let present: Vec<&str> = self.data.keys().map(String::as_str).collect();
            format!("Data has no binding '{name}' (it has: {})", present.join(", "))
        })
    }

    /// A metadata number, whether sent as `1`, `"1"` or `"\"1\""`.
    pub fn meta_u32(&self, name: &str) -> Option<u32> {
        match self.metadata.get(name)? {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => unquote(s).trim().parse().ok(),
            _ => None,
        }
    }

    /// A metadata string, with the quotes the host sometimes leaves on it removed.
    pub fn meta_string(&self, name: &str) -> Option<String> {
        match self.metadata.get(name)? {
            Value::String(s) => Some(unquote(s).to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `Metadata.sys.UtcNow`, the host's clock at dispatch.
    pub fn utc_now(&self) -> Option<time::OffsetDateTime> {
        let sys = self.metadata.get("sys")?;
        let text = sys.get("UtcNow")?.as_str()?;
        parse_datetime(unquote(text))
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

pub fn parse_datetime(text: &str) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        // The host writes .NET round-trip times, sometimes without an offset.
        .or_else(|| time::OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339).ok())
}

/// The text of a queue message, however the host wrapped it:
/// - a JSON string holding the JSON-encoded text (`"\"{\\\"a\\\":1}\""` → `{"a":1}`),
/// - a JSON string holding the text itself (`"{\"a\":1}"` → `{"a":1}`),
/// - an object (the host parsed it for us) → its JSON text,
/// - a string of base64 (a byte payload) whose bytes are UTF-8 JSON → that JSON.
pub fn queue_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::String(inner)) => Ok(inner),
                Ok(_) => Ok(s.clone()),
                Err(_) => Ok(decode_base64_json(s).unwrap_or_else(|| s.clone())),
            }
        }
        Value::Object(_) | Value::Array(_) => Ok(value.to_string()),
        Value::Null => Err("the queue message is null".into()),
        other => Ok(other.to_string()),
    }
}

fn decode_base64_json(s: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    serde_json::from_str::<Value>(&text).ok().filter(|v| v.is_object()).map(|_| text)
}

/// The timer trigger's object: `{"Schedule": {...}, "ScheduleStatus": {...} | null, "IsPastDue": bool}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimerInfo {
    #[serde(rename = "IsPastDue", default)]
    pub is_past_due: bool,
    #[serde(rename = "ScheduleStatus", default)]
    pub schedule_status: Option<Value>,
}

pub fn timer_info(value: &Value) -> Result<TimerInfo, String> {
    let value = match value {
        Value::String(s) => serde_json::from_str(s).map_err(|e| format!("timer payload is not JSON: {e}"))?,
        other => other.clone(),
    };
    if !value.is_object() {
        return Err("timer payload must be an object".into());
    }
    serde_json::from_value(value).map_err(|e| format!("timer payload: {e}"))
}

/// The HTTP trigger's request object (not proxied).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpRequest {
    #[serde(rename = "Url", default)]
    pub url: String,
    #[serde(rename = "Method", default)]
    pub method: String,
    #[serde(rename = "Query", default)]
    pub query: Map<String, Value>,
    #[serde(rename = "Params", default)]
    pub params: Map<String, Value>,
}

impl HttpRequest {
    pub fn parse(value: &Value) -> Result<Self, String> {
        if !value.is_object() {
            return Err("req must be an object with Url, Method, Query, Headers".into());
        }
        serde_json::from_value(value.clone()).map_err(|e| format!("req: {e}"))
    }

    /// A query parameter; the host sends either a string or a list of strings.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let found = self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)?;
        match found {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }
}

/// The HTTP output binding's value.
pub fn http_response(status: u16, body: &Value) -> Value {
    serde_json::json!({
        "statusCode": status,
        "body": body.to_string(),
        "headers": {"Content-Type": "application/json"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_text_in_every_wrapping() {
        let text = r#"{"a":1}"#;
        let double = serde_json::to_string(&serde_json::to_string(text).unwrap()).unwrap();
        let from_double: Value = serde_json::from_str(&double).unwrap();
        assert_eq!(queue_text(&from_double).unwrap(), text);
        assert_eq!(queue_text(&json!(text)).unwrap(), text);
        assert_eq!(queue_text(&json!({"a": 1})).unwrap(), text);
        let b64 = base64::engine::general_purpose::STANDARD.encode(text);
        assert_eq!(queue_text(&json!(b64)).unwrap(), text);
        assert_eq!(queue_text(&json!("plain words")).unwrap(), "plain words");
        assert!(queue_text(&Value::Null).is_err());
    }

    #[test]
    fn metadata_numbers_and_quoted_strings() {
        let inv = Invocation::parse(
            br#"{"Data":{},"Metadata":{"DequeueCount":"2","Id":"\"abc\"","N":3,"sys":{"UtcNow":"2026-11-23T10:00:00.123Z"}}}"#,
        )
        .unwrap();
        assert_eq!(inv.meta_u32("DequeueCount"), Some(2));
        assert_eq!(inv.meta_u32("N"), Some(3));
        assert_eq!(inv.meta_string("Id").as_deref(), Some("abc"));
        assert_eq!(inv.utc_now().unwrap().unix_timestamp(), 1_795_428_000);
    }
}
