//! The step queue against Azurite (HTTPS, OAuth): delayed sends, redelivery with a rising
//! dequeue count, pop receipts, visibility extension, and text that needs XML escaping.

mod common;

use kc_test_stack::Azurite;
use kusto_copy::storage::queue::{MessageEncoding, MessageSender, StorageQueue};
use std::time::{Duration, Instant};

async fn queue(azurite: &Azurite, encoding: MessageEncoding) -> StorageQueue {
    let name = common::unique_name("steps");
    let q = StorageQueue::new(common::clients(azurite).queue(&name).unwrap(), &name, encoding);
    q.ensure_exists().await.unwrap();
    q.ensure_exists().await.unwrap(); // idempotent
    q
}

/// Receives until a message shows up or `within` passes.
async fn receive_one(q: &StorageQueue, visibility: Duration, within: Duration) -> Option<kusto_copy::storage::queue::Received> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(m) = q.receive(1, visibility).await.unwrap().into_iter().next() {
            return Some(m);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn delayed_messages_stay_hidden_until_due() {
    let azurite = Azurite::start();
    let q = queue(&azurite, MessageEncoding::None).await;
    let sent = Instant::now();
    q.send(r#"{"job":"j","step":"plan"}"#, Duration::from_secs(2)).await.unwrap();
    assert!(q.receive(32, Duration::from_secs(30)).await.unwrap().is_empty(), "visible before its delay");
    let m = receive_one(&q, Duration::from_secs(30), Duration::from_secs(10)).await.expect("visible after its delay");
    assert!(sent.elapsed() >= Duration::from_millis(1900), "arrived after {:?}", sent.elapsed());
    assert_eq!(m.text, r#"{"job":"j","step":"plan"}"#);
    assert_eq!(m.dequeue_count, 1);
}

#[tokio::test]
async fn an_unfinished_message_comes_back_with_a_higher_dequeue_count() {
    let azurite = Azurite::start();
    let q = queue(&azurite, MessageEncoding::None).await;
    q.send(r#"{"job":"j","step":"export"}"#, Duration::ZERO).await.unwrap();
    let first = receive_one(&q, Duration::from_secs(1), Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.dequeue_count, 1);
    // Not deleted: after its visibility timeout it is delivered again.
    let second = receive_one(&q, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.dequeue_count, 2);
    // The first pop receipt is stale now; only the latest deletes.
    assert!(!q.delete(&first.id, &first.pop_receipt).await.unwrap());
    assert!(q.delete(&second.id, &second.pop_receipt).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(32, Duration::from_secs(1)).await.unwrap().is_empty(), "deleted messages never return");
}

#[tokio::test]
async fn extending_visibility_keeps_a_message_hidden() {
    let azurite = Azurite::start();
    let q = queue(&azurite, MessageEncoding::None).await;
    q.send(r#"{"job":"j","step":"ingest"}"#, Duration::ZERO).await.unwrap();
    let m = receive_one(&q, Duration::from_secs(1), Duration::from_secs(5)).await.unwrap();
    let receipt = q.extend(&m.id, &m.pop_receipt, Duration::from_secs(5)).await.unwrap().expect("new pop receipt");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(32, Duration::from_secs(1)).await.unwrap().is_empty(), "still hidden after its first timeout");
    assert!(q.delete(&m.id, &receipt).await.unwrap(), "the new receipt deletes");
}

#[tokio::test]
async fn text_round_trips_in_both_encodings() {
    let azurite = Azurite::start();
    let text = r#"{"query":"| where a < 1 & b > 2 <| x","name":"é✓"}"#;
    for encoding in [MessageEncoding::None, MessageEncoding::Base64] {
        let q = queue(&azurite, encoding).await;
        q.send(text, Duration::ZERO).await.unwrap();
        let m = receive_one(&q, Duration::from_secs(30), Duration::from_secs(5)).await.unwrap();
        assert_eq!(m.text, text, "{encoding:?}");
    }
}
