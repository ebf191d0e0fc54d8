//! The local demo (`scripts/demo`): a real copy end to end on this machine.
//!
//! Starts Azurite (HTTPS, OAuth) and two simulated Kusto clusters, seeds the source with a
//! table of a few million rows over many extents with historical creation times, runs the
//! real `kc copy` binary against them, and prints the verification: row counts, a checksum
//! over every column of every row, and rows per extent creation time on both sides.
//!
//! `kc-demo [--rows N] [--extents N] [--kc path/to/kc]`

use kc_test_stack::demo::{self, arg};
use std::process::ExitCode;
use std::time::Instant;

#[tokio::main]
async fn main() -> ExitCode {
    let rows: usize = arg("--rows").and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let extents: usize = arg("--extents").and_then(|v| v.parse().ok()).unwrap_or(100);
    let kc = arg("--kc").unwrap_or_else(|| kc_test_stack::repo_root().join("target/release/kc").display().to_string());
    let stack = demo::start(rows, extents).await;
    let (source, destination, azurite) = (&stack.source, &stack.destination, &stack.azurite);

    let staging = format!("{}/staging/demo", azurite.blob_endpoint());
    println!("== kc copy -s {}/demo/Events -d {}/demo -t {staging}", source.url(), destination.url());
    let started = Instant::now();
    let child = tokio::process::Command::new(&kc)
        .args(["copy", "-s", &format!("{}/demo/Events", source.url()), "-d", &format!("{}/demo", destination.url()), "-t", &staging, "--export", "8"])
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &azurite.ca_pem_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn();
    let status = match child {
        // Ctrl-C stops kc copy too (and Azurite, when this returns and its handle drops).
        Ok(mut child) => tokio::select! {
            s = child.wait() => s,
            _ = tokio::signal::ctrl_c() => {
                let _ = child.kill().await;
                eprintln!("interrupted");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => Err(e),
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("kc copy failed: {s}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot run {kc}: {e} (build it with `cargo build --release --bin kc`)");
            return ExitCode::FAILURE;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("   copied in {seconds:.1} s ({:.0} rows/s)", rows as f64 / seconds);
    if demo::verify(&stack) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
