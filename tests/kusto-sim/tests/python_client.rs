//! Holds the simulator to the official Python client (azure-kusto-data): a management
//! command, a v2 query with every scalar type and nulls, and error answers must all be
//! parsed by that client without complaint.
//!
//! Needs `<repo>/.venv` with `tests/kusto-sim/python/requirements.txt` installed.

use std::path::PathBuf;

use kusto_sim::{Cluster, ClusterConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_parses_every_answer() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir.join("../..").canonicalize().unwrap();
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: create it with `python3 -m venv .venv && .venv/bin/pip install -r tests/kusto-sim/python/requirements.txt` in {}",
        python.display(),
        repo.display()
    );
    let cluster = Cluster::start("python", ClusterConfig::default()).await.unwrap();
    let script = crate_dir.join("python/check_client.py");
    let (url, token) = (cluster.url().to_string(), cluster.token());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(url).arg(token).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "check_client.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.lines().last(), Some("OK"), "stdout:\n{stdout}");
    assert!(stdout.contains("ok: v2: dynamic"), "stdout:\n{stdout}");
}
