//! `kc-chaos --schedules N --seed S`: runs N schedules of the fault explorer, prints each
//! schedule's seed and findings, the faults injected by kind and class, and one summary line;
//! exits non-zero when anything was lost, duplicated, aged wrongly, leaked, left unfinished
//! or exported beyond capacity. `kc-chaos --replay SEED` runs one schedule with its trace.

use kc_chaos::{run_schedule, schedule_seed, Class, Findings, ScheduleOptions};
use std::collections::BTreeMap;
use std::process::ExitCode;

const USAGE: &str = "usage: kc-chaos [--schedules N] [--seed S] [--azurite] | kc-chaos --replay SEED [--azurite]\n  --azurite: checkpoints in a local Azurite (npm ci first), in real time";

fn parse(args: &[String]) -> Result<(u64, u64, Option<u64>, bool), String> {
    let (mut schedules, mut seed, mut replay, mut azurite) = (200u64, 1u64, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a number\n{USAGE}"))?;
            v.parse().map_err(|_| format!("{name}: {v:?} is not a number\n{USAGE}"))
        };
        match a.as_str() {
            "--schedules" => schedules = value("--schedules")?,
            "--seed" => seed = value("--seed")?,
            "--replay" => replay = Some(value("--replay")?),
            "--azurite" => azurite = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok((schedules, seed, replay, azurite))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (schedules, seed, replay, azurite) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match replay {
        Some(s) => vec![s],
        None => (0..schedules).map(|i| schedule_seed(seed, i)).collect(),
    };
    let azurite = azurite.then(kc_test_stack::Azurite::start);
    let mut total = Findings::default();
    let mut injected: BTreeMap<(Class, String), u64> = BTreeMap::new();
    for s in &seeds {
        let store = azurite.as_ref().map(|a| kc_chaos::azurite::store(a, *s));
        let o = run_schedule(*s, &ScheduleOptions { trace: replay.is_some(), store, ..ScheduleOptions::default() });
        for line in &o.trace {
            println!("  {line}");
        }
        let verdict = if o.findings.clean() { "ok" } else { "FAILED" };
        println!(
            "schedule seed={} {verdict} lost={} duplicated={} creation_mismatch={} leaked={} incomplete={} over_capacity={} simulated={:.1}h: {}",
            o.seed,
            o.findings.lost,
            o.findings.duplicated,
            o.findings.creation_mismatch,
            o.findings.leaked,
            o.findings.incomplete,
            o.findings.over_capacity,
            o.simulated.as_secs_f64() / 3600.0,
            o.ends.join("; ")
        );
        for p in &o.findings.problems {
            println!("  problem: {p}");
        }
        if !o.findings.clean() {
            println!("  replay: kc-chaos --replay {}", o.seed);
        }
        total.add(&o.findings);
        for (k, n) in o.injected {
            *injected.entry(k).or_default() += n;
        }
    }
    println!("faults injected, by class and kind:");
    for ((class, kind), n) in &injected {
        println!("  {:<11} {kind:<40} {n}", format!("{class:?}").to_lowercase());
    }
    println!(
        "chaos: schedules={} lost={} duplicated={} creation_mismatch={} leaked={} incomplete={} over_capacity={}",
        seeds.len(),
        total.lost,
        total.duplicated,
        total.creation_mismatch,
        total.leaked,
        total.incomplete,
        total.over_capacity
    );
    if total.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
