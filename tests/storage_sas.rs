//! SAS minted by our code, checked by Azurite: each grants what it says and nothing more.
//! The export SAS writes but cannot read; the ingestion SAS reads but cannot write; neither
//! reaches another staging folder.

mod common;

use azure_core::http::{RequestContent, StatusCode};
use kc_test_stack::Azurite;
use kusto_copy::kusto::SecretUrl;
use kusto_copy::storage::sas::{Access, StagingSas};
use time::Duration;

fn status(err: azure_core::Error) -> StatusCode {
    err.http_status().unwrap_or_else(|| panic!("expected an HTTP error, got {err}"))
}

/// The same SAS token on another container's URL.
fn moved_to(sas: &SecretUrl, container: &str) -> azure_core::http::Url {
    let mut url = sas.expose_url().clone();
    let path = url.path().rsplit_once('/').unwrap().0.to_owned();
    url.set_path(&format!("{path}/{container}"));
    url
}

#[tokio::test]
async fn staging_sas_grants_exactly_its_access() {
    let azurite = Azurite::start();
    let clients = common::clients(&azurite);
    let (folder, other) = (common::unique_name("stage"), common::unique_name("stage"));
    for name in [&folder, &other] {
        clients.container(name).unwrap().create(None).await.unwrap();
    }
    // A blob in the other folder that nobody holding our SAS may touch.
    clients.container(&other).unwrap().blob_client("secret.parquet").block_blob_client()
        .upload(RequestContent::from(b"other".to_vec()), None).await.unwrap();

    let sas = StagingSas::new(clients.blob_service().unwrap());
    let export = sas.folder_url(&folder, Access::ExportWrite, Duration::hours(1)).await.unwrap();
    let ingest = sas.folder_url(&folder, Access::IngestRead, Duration::hours(1)).await.unwrap();
    assert!(!format!("{export} {ingest:?}").contains("sig="), "SAS URLs never print their signature");

    // Export SAS: create and write in its folder, list it...
    let export_folder = clients.container_with_sas(export.expose_url().clone()).unwrap();
    export_folder.blob_client("part-0.parquet").block_blob_client()
        .upload(RequestContent::from(b"exported rows".to_vec()), None).await.expect("export SAS writes");
    let mut pages = export_folder.list_blobs(None).unwrap().into_pages();
    let page = futures::TryStreamExt::try_next(&mut pages).await.expect("export SAS lists").unwrap().into_model().unwrap();
    assert_eq!(page.blob_items.iter().filter_map(|b| b.name.as_deref()).collect::<Vec<_>>(), vec!["part-0.parquet"]);
    // ...but cannot read or delete what it wrote...
    let err = export_folder.blob_client("part-0.parquet").download(None).await.err().expect("export SAS must not read");
    assert_eq!(status(err), StatusCode::Forbidden);
    let err = export_folder.blob_client("part-0.parquet").delete(None).await.err().expect("export SAS must not delete");
    assert_eq!(status(err), StatusCode::Forbidden);
    // ...and cannot write into another folder.
    let elsewhere = clients.container_with_sas(moved_to(&export, &other)).unwrap();
    let err = elsewhere.blob_client("intruder.parquet").block_blob_client()
        .upload(RequestContent::from(b"x".to_vec()), None).await.err().expect("export SAS must not reach another folder");
    assert_eq!(status(err), StatusCode::Forbidden);

    // Ingestion SAS: reads blobs in its folder...
    let ingest_folder = clients.container_with_sas(ingest.expose_url().clone()).unwrap();
    let body = ingest_folder.blob_client("part-0.parquet").download(None).await.expect("ingestion SAS reads").body.collect().await.unwrap();
    assert_eq!(&body[..], b"exported rows");
    // ...but cannot write, overwrite or list...
    let err = ingest_folder.blob_client("new.parquet").block_blob_client()
        .upload(RequestContent::from(b"x".to_vec()), None).await.err().expect("ingestion SAS must not write");
    assert_eq!(status(err), StatusCode::Forbidden);
    let err = ingest_folder.blob_client("part-0.parquet").block_blob_client()
        .upload(RequestContent::from(b"x".to_vec()), None).await.err().expect("ingestion SAS must not overwrite");
    assert_eq!(status(err), StatusCode::Forbidden);
    let mut pages = ingest_folder.list_blobs(None).unwrap().into_pages();
    let err = futures::TryStreamExt::try_next(&mut pages).await.err().expect("ingestion SAS must not list");
    assert_eq!(status(err), StatusCode::Forbidden);
    // ...and cannot read another folder.
    let elsewhere = clients.container_with_sas(moved_to(&ingest, &other)).unwrap();
    let err = elsewhere.blob_client("secret.parquet").download(None).await.err().expect("ingestion SAS must not reach another folder");
    assert_eq!(status(err), StatusCode::Forbidden);

    // The delegation key is cached: a second SAS costs no round trip and still works.
    let again = sas.folder_url(&folder, Access::IngestRead, Duration::minutes(10)).await.unwrap();
    clients.container_with_sas(again.expose_url().clone()).unwrap().blob_client("part-0.parquet").download(None).await.unwrap();
}

#[tokio::test]
async fn an_expired_sas_is_refused() {
    let azurite = Azurite::start();
    let clients = common::clients(&azurite);
    let folder = common::unique_name("stage");
    clients.container(&folder).unwrap().create(None).await.unwrap();
    let sas = StagingSas::new(clients.blob_service().unwrap());
    // Already expired: lifetimes are relative to now, so a negative one is in the past.
    let expired = sas.folder_url(&folder, Access::ExportWrite, Duration::minutes(-1)).await.unwrap();
    let err = clients.container_with_sas(expired.expose_url().clone()).unwrap().blob_client("x").block_blob_client()
        .upload(RequestContent::from(b"x".to_vec()), None).await.err().expect("expired SAS must be refused");
    assert_eq!(status(err), StatusCode::Forbidden);
}
