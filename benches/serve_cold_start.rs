//! Benchmark (not a test): `kc serve` cold start and idle memory.
//!
//! - cold start: from exec to the first `200` on `GET /` (what the Functions host waits for
//!   before it sends work), over several runs;
//! - idle RSS: resident memory of a ready server that has done nothing yet.
//!
//! Both are printed next to a baseline measured in the same run on the same binary: exec to
//! exit of `kc --version` (the floor any start pays), and the RSS of `kc validate -` blocked on
//! standard input (the same binary mapped, with no runtime or server). Machines here are
//! shared and noisy: read ratios and medians, not single numbers.
//!
//! Run: `cargo bench --bench serve_cold_start` (builds `kc` in release first).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 15;

fn kc_path() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "kc"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "release build of kc failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join("release/kc")
}

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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored.
    let kc = kc_path();

    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = Command::new(&kc).arg("--version").output().unwrap();
        assert!(out.status.success());
        baseline.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    let mut cold = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let port = free_port();
        let start = Instant::now();
        let child = serve(&kc, port);
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
        rss.push(rss_kib(child.id()) as f64 / 1024.0);
        stop(child);
    }

    let mut idle = Command::new(&kc).args(["validate", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let baseline_rss = rss_kib(idle.id()) as f64 / 1024.0;
    drop(idle.stdin.take());
    let _ = idle.wait();

    let (cold_med, base_med, rss_med) = (median(cold.clone()), median(baseline.clone()), median(rss.clone()));
    let cold_max = cold.iter().cloned().fold(0.0, f64::max);
    println!("kc serve cold start (exec -> first 200 on GET /), {RUNS} runs");
    println!("  median {cold_med:.1} ms, min {:.1} ms, max {cold_max:.1} ms   (goal < 50 ms)", cold.iter().cloned().fold(f64::MAX, f64::min));
    println!("  baseline `kc --version` exec->exit: median {base_med:.1} ms   ratio {:.2}x", cold_med / base_med);
    println!("kc serve idle RSS after ready");
    println!("  median {rss_med:.1} MiB   (goal < 20 MiB)");
    println!("  baseline `kc validate -` idle: {baseline_rss:.1} MiB   ratio {:.2}x", rss_med / baseline_rss);
}
