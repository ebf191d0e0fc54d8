//! The step queue on Azure Queue Storage.
//!
//! The Functions host reads and writes queue text with the encoding set in host.json
//! (`extensions.queues.messageEncoding`); what we enqueue ourselves must use the same one, so
//! the encoding is a property of the queue handle, never decided at a call site. We run with
//! `none`: plain JSON is what a person drops on `kc-requests` with any tool, and it stays
//! readable in Storage Explorer. The SDK escapes the text for the XML envelope.

use super::{classify, Failure, StorageError};
use async_trait::async_trait;
use azure_core::http::RequestContent;
use azure_storage_queue::models::{QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueMessage};
use azure_storage_queue::QueueClient;
use base64::Engine as _;
use std::time::Duration;

/// How message text is stored in the queue (host.json `messageEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEncoding {
    None,
    Base64,
}

impl MessageEncoding {
    pub fn encode(self, text: &str) -> String {
        match self {
            MessageEncoding::None => text.to_owned(),
            MessageEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(text),
        }
    }

    pub fn decode(self, stored: &str) -> Result<String, String> {
        match self {
            MessageEncoding::None => Ok(stored.to_owned()),
            MessageEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(stored.trim())
                .map_err(|e| format!("not base64: {e}"))
                .and_then(|b| String::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))),
        }
    }
}

/// What the handler needs from a queue: send a message, possibly delayed.
#[async_trait]
pub trait MessageSender: Send + Sync {
    async fn send(&self, text: &str, delay: Duration) -> Result<(), StorageError>;
}

/// A received message, for local drivers (the host harness, `kc copy`).
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub pop_receipt: String,
    pub dequeue_count: u32,
    pub text: String,
    pub insertion_time: Option<time::OffsetDateTime>,
    pub expiration_time: Option<time::OffsetDateTime>,
    pub next_visible: Option<time::OffsetDateTime>,
}


pub struct StorageQueue {
    client: QueueClient,
    name: String,
    encoding: MessageEncoding,
}

/// Queue Storage takes visibility timeouts in whole seconds, at most 7 days.
fn seconds(d: Duration) -> i32 {
    d.as_secs().min(7 * 24 * 3600) as i32
}

impl StorageQueue {
    pub fn new(client: QueueClient, name: &str, encoding: MessageEncoding) -> Self {
        Self { client, name: name.to_owned(), encoding }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the queue if it does not exist (the host creates trigger queues itself, but
    /// a local driver may run first).
    pub async fn ensure_exists(&self) -> Result<(), StorageError> {
        let what = format!("create queue {}", self.name);
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            Err(err) => match classify(&what, err) {
                Failure::Conflict => Ok(()),
                other => Err(other.into_error(&what)),
            },
        }
    }

    /// Receives up to `max` messages (1-32), hiding them for `visibility`.
    pub async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, StorageError> {
        let what = format!("receive from queue {}", self.name);
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, 32) as i32),
            visibility_timeout: Some(seconds(visibility).max(1)),
            ..Default::default()
        };
        let response = self.client.receive_messages(Some(options)).await.map_err(|e| classify(&what, e).into_error(&what))?;
        let messages = response.into_model().map_err(|e| classify(&what, e).into_error(&what))?;
        let mut out = Vec::new();
        for m in messages.items.unwrap_or_default() {
            let stored = m.message_text.unwrap_or_default();
            let text = self.encoding.decode(&stored).map_err(|detail| StorageError::Permanent {
                what: format!("decode message on queue {}", self.name),
                detail,
            })?;
            out.push(Received {
                id: m.message_id.unwrap_or_default(),
                pop_receipt: m.pop_receipt.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(0) as u32,
                text,
                insertion_time: m.insertion_time,
                expiration_time: m.expiration_time,
                next_visible: m.time_next_visible,
            });
        }
        Ok(out)
    }

    /// Deletes a message; `Ok(false)` if the pop receipt is stale (someone else holds it now).
    pub async fn delete(&self, id: &str, pop_receipt: &str) -> Result<bool, StorageError> {
        let what = format!("delete message from queue {}", self.name);
        match self.client.delete_message(id, pop_receipt, None).await {
            Ok(_) => Ok(true),
            Err(err) => match classify(&what, err) {
                Failure::NotFound => Ok(false),
                Failure::Error(StorageError::Permanent { detail, .. }) if detail.contains("400") => Ok(false),
                other => Err(other.into_error(&what)),
            },
        }
    }

    /// Keeps a message hidden for `visibility` more; returns the new pop receipt.
    pub async fn extend(&self, id: &str, pop_receipt: &str, visibility: Duration) -> Result<Option<String>, StorageError> {
        let what = format!("extend message visibility on queue {}", self.name);
        match self.client.update_message(id, pop_receipt, seconds(visibility), None).await {
            Ok(response) => Ok(response
                .headers()
                .get_optional_str(&azure_core::http::headers::HeaderName::from_static("x-ms-popreceipt"))
                .map(str::to_owned)),
            Err(err) => match classify(&what, err) {
                Failure::NotFound => Ok(None),
                other => Err(other.into_error(&what)),
            },
        }
    }
}

#[async_trait]
impl MessageSender for StorageQueue {
    async fn send(&self, text: &str, delay: Duration) -> Result<(), StorageError> {
        let what = format!("send to queue {}", self.name);
        let message = QueueMessage { message_text: Some(self.encoding.encode(text)) };
        let content: RequestContent<QueueMessage, _> =
            message.try_into().map_err(|e| classify(&what, e).into_error(&what))?;
        let options = QueueClientSendMessageOptions {
            visibility_timeout: (delay.as_secs() > 0).then(|| seconds(delay)),
            // Never expire: a step message that vanished would stall its block until the
            // sweeper found it.
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        self.client
            .send_message(content, Some(options))
            .await
            .map(|_| ())
            .map_err(|e| classify(&what, e).into_error(&what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let text = r#"{"q":"T | where a < 1 & b > 2","s":"é"}"#;
        for enc in [MessageEncoding::None, MessageEncoding::Base64] {
            assert_eq!(enc.decode(&enc.encode(text)).unwrap(), text);
        }
        assert!(MessageEncoding::Base64.decode("{not base64}").is_err());
    }
}
