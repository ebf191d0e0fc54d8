//! `kc-package --binary PATH [--app DIR] [--out FILE]`: writes the Function App zip
//! (default `dist/kc-functionapp.zip` from the repository's host.json and functions/).
//! `scripts/package` builds the release binary and calls this.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let Some(binary) = value("--binary") else {
        eprintln!("usage: kc-package --binary PATH [--app DIR] [--out FILE]");
        return ExitCode::from(2);
    };
    let app = value("--app").unwrap_or_else(|| PathBuf::from("."));
    let out = value("--out").unwrap_or_else(|| PathBuf::from("dist/kc-functionapp.zip"));
    match kc_package::build(&app, &binary, &out) {
        Ok(entries) => {
            println!("wrote {} ({} entries: {})", out.display(), entries.len(), entries.join(", "));
            if let Some(glibc) = std::fs::read(&binary).ok().as_deref().and_then(kc_package::highest_glibc) {
                println!("{} needs {glibc} at most", binary.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kc-package: {e}");
            ExitCode::FAILURE
        }
    }
}
