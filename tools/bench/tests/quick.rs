//! `kc-bench --quick` in the test command, so the benchmark cannot rot: a dozen short blocks
//! through every part (ideal scheduler, `kc copy`, `kc serve` x1 and x2, the scale runs, the
//! cold start). The figures are not judged here (this machine is shared and noisy); that
//! every part ran, checked its copy and reported each figure is.

use std::process::Command;

#[test]
fn the_quick_run_measures_every_part_and_writes_the_json() {
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kc-bench"));
    // `cargo test --workspace` builds the `kc` binary beside this one (the root package's
    // integration tests need it).
    let kc = bench.with_file_name(format!("kc{}", std::env::consts::EXE_SUFFIX));
    assert!(kc.exists(), "no kc at {}: build it with `cargo build --bin kc`", kc.display());
    let json = std::env::temp_dir().join(format!("kc-bench-quick-{}.json", std::process::id()));
    let out = Command::new(&bench).args(["--quick", "--json"]).arg(&json).arg("--kc").arg(&kc).output().expect("run kc-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kc-bench --quick failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    for driver in ["copy", "serve"] {
        let d = &figures[driver];
        for key in ["t", "t_star", "t_base", "ratio", "ratio_base", "export_utilisation", "storage_tx_per_block", "host_storage_tx_per_block", "kusto_requests_per_block", "cpu_ms_per_block", "peak_rss_mib"] {
            assert!(d[key].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{driver}.{key} is {} in {figures}", d[key]);
        }
        // A copy takes at least the ideal pipeline's time, and uses the clusters.
        assert!(d["ratio"].as_f64().unwrap() >= 1.0, "{driver} beat the ideal pipeline: {d}");
        // One export per block for `kc copy`; under the host a repeated export is possible
        // (it costs, and shows in the figures) but never fewer.
        let exports = d["kusto_requests_by_kind"][".export"].as_u64().unwrap_or(0);
        assert!(if driver == "copy" { exports == 12 } else { exports >= 12 }, "{driver}: {d}");
        assert!(d["storage_tx_per_block"].as_f64().unwrap() > 0.0 && d["peak_rss_mib"].as_f64().unwrap() > 1.0, "{driver}: {d}");
    }
    assert!(figures["serve"]["host_storage_tx_per_block"].as_f64().unwrap() > 0.0, "{figures}");
    assert_eq!(figures["scale_out"].as_array().map(Vec::len), Some(2), "{figures}");
    assert_eq!(figures["scale"]["blocks"].as_u64(), Some(3_000), "{figures}");
    assert!(figures["scale"]["status_seconds"].as_f64().is_some() && figures["scale"]["azurite_status_seconds"].as_f64().is_some(), "{figures}");
    assert!(figures["cold_start"]["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{figures}");
    assert!(stdout.contains("T/T*"), "the table: {stdout}");
}
