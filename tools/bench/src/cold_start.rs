//! `kc serve` cold start and idle memory (what was `cargo bench --bench serve_cold_start`):
//!
//! - cold start: from exec to the first `200` on `GET /` (what the Functions host waits for
//!   before it sends work), the median over several runs;
//! - idle RSS: resident memory of a ready server that has done nothing yet.
//!
//! Each beside a baseline measured in the same run on the same binary: exec to exit of
//! `kc --version` (the floor any start pays), and the RSS of `kc validate -` blocked on
//! standard input (the same binary mapped, with no runtime or server).

#[derive(Debug, Clone)]
pub struct ColdStart {
    pub runs: usize,
    pub ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub baseline_ms: f64,
    pub idle_rss_mib: f64,
    pub baseline_rss_mib: f64,
}

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Settings that validate but point nowhere: start-up must not touch the network.
fn serve(kc: &std::path::Path, port: u16) -> Child {
    Command::new(kc)
        .arg("serve")
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("KC_BLOB_ENDPOINT", "https://127.0.0.1:9/devstoreaccount1")
        .env("KC_QUEUE_ENDPOINT", "https://127.0.0.1:9/devstoreaccount1")
        .env("KC_CREDENTIAL", "emulator")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kc serve")
}

fn get_root(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split(' ').nth(1)?.parse().ok()
}

fn rss_mib(pid: u32) -> f64 {
    kusto_copy::metrics::rss_mib_of(&pid.to_string()).unwrap_or(0.0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Measures `runs` cold starts of the `kc` at `kc`, and its idle memory.
pub fn measure(kc: &std::path::Path, runs: usize) -> ColdStart {
    let mut baseline = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new(kc).arg("--version").output().unwrap();
        assert!(out.status.success());
        baseline.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    let mut cold = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let port = free_port();
        let start = Instant::now();
        let child = serve(kc, port);
        let deadline = start + Duration::from_secs(10);
        let status = loop {
            if let Some(code) = get_root(port) {
                break code;
            }
            assert!(Instant::now() < deadline, "kc serve did not answer within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        };
        cold.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(300));
        rss.push(rss_mib(child.id()));
        stop(child);
    }

    let mut idle = Command::new(kc).args(["validate", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let baseline_rss = rss_mib(idle.id());
    drop(idle.stdin.take());
    let _ = idle.wait();

    let cold_max = cold.iter().cloned().fold(0.0, f64::max);
    let cold_min = cold.iter().cloned().fold(f64::MAX, f64::min);
    ColdStart { runs, ms: median(cold), min_ms: cold_min, max_ms: cold_max, baseline_ms: median(baseline), idle_rss_mib: median(rss), baseline_rss_mib: baseline_rss }
}
