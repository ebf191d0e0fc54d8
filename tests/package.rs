//! The Function App package (`scripts/package`), built here from the debug binary: exactly
//! host.json, one folder per function with its function.json, and the handler at the path
//! host.json names, stored as a Unix executable (made by Unix, mode 0755), as Linux hosting's
//! fuse-zip mount needs it.

use kc_package::zip::ZipArchive;
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn the_package_holds_exactly_the_app_and_an_executable_handler() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = Path::new(env!("CARGO_BIN_EXE_kc"));
    let dir = std::env::temp_dir().join(format!("kc-package-{}", std::process::id()));
    let out = dir.join("kc-functionapp.zip");
    kc_package::build(root, binary, &out).unwrap();

    let mut zip = ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let raw = central_directory(&std::fs::read(&out).unwrap());
    let names: BTreeSet<String> = raw.keys().cloned().collect();
    let exe = kc_package::executable_path(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
    let mut expected: BTreeSet<String> = ["host.json".to_owned(), exe.clone()].into();
    for entry in std::fs::read_dir(root.join("functions")).unwrap() {
        expected.insert(format!("{}/function.json", entry.unwrap().file_name().to_string_lossy()));
    }
    assert_eq!(names, expected);
    assert!(expected.contains("steps/function.json") && expected.contains("scheduler/function.json"));

    assert_eq!(zip.len(), names.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        // Read from the central directory's bytes, not through the zip crate that wrote them.
        let (made_by_system, mode) = raw[&name];
        // "Made by" Unix (3): fuse-zip applies Unix modes only to such entries.
        assert_eq!(made_by_system, 3, "{name} made by Unix");
        assert_eq!(entry.unix_mode().map(|m| m & 0o7777), Some(mode), "{name}: the crate reads the same mode");
        if name == exe {
            assert_eq!(mode, 0o755, "the handler is executable");
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            assert_eq!(bytes, std::fs::read(binary).unwrap(), "the handler is the binary given");
        } else {
            assert_eq!(mode, 0o644, "{name}");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            assert_eq!(text, std::fs::read_to_string(root.join(if name == "host.json" { name.clone() } else { format!("functions/{name}") })).unwrap());
        }
    }

    // What the host's Linux image must provide: the highest glibc symbol version needed.
    let glibc = kc_package::highest_glibc(&std::fs::read(binary).unwrap());
    println!("kc needs {} at most", glibc.as_deref().unwrap_or("no glibc version"));
    if let Ok(dump) = std::process::Command::new("objdump").arg("-T").arg(binary).output() {
        // Cross-check the ELF reader against binutils where it is installed.
        let text = String::from_utf8_lossy(&dump.stdout);
        let mut versions: Vec<Vec<u32>> = text
            .split_whitespace()
            .filter_map(|w| w.trim_matches(|c| c == '(' || c == ')').strip_prefix("GLIBC_"))
            .filter_map(|v| v.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok())
            .collect();
        versions.sort();
        let highest = versions.last().map(|v| format!("GLIBC_{}", v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")));
        if dump.status.success() {
            assert_eq!(glibc, highest, "ELF reader agrees with objdump -T");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_json_must_name_a_path_inside_the_package() {
    for bad in [r#"{}"#, r#"{"customHandler":{"description":{"defaultExecutablePath":"/usr/bin/kc"}}}"#, r#"{"customHandler":{"description":{"defaultExecutablePath":"../kc"}}}"#] {
        assert!(kc_package::executable_path(bad).is_err(), "{bad}");
    }
    assert_eq!(kc_package::executable_path(r#"{"customHandler":{"description":{"defaultExecutablePath":"bin/kc"}}}"#).unwrap(), "bin/kc");
}

/// Each central directory entry's name → (the "made by" system byte, the Unix mode bits in the
/// high half of the external attributes), read straight from the zip's bytes (APPNOTE 4.3.12).
fn central_directory(zip: &[u8]) -> std::collections::HashMap<String, (u8, u32)> {
    let u16_at = |o: usize| u16::from_le_bytes([zip[o], zip[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(zip[o..o + 4].try_into().unwrap());
    let eocd = (0..=zip.len() - 22).rev().find(|&o| u32_at(o) == 0x0605_4b50).expect("end of central directory");
    let (count, mut at) = (u16_at(eocd + 10), u32_at(eocd + 16) as usize);
    let mut out = std::collections::HashMap::new();
    for _ in 0..count {
        assert_eq!(u32_at(at), 0x0201_4b50, "central directory header");
        let system = zip[at + 5];
        let mode = (u32_at(at + 38) >> 16) & 0o7777;
        let (name_len, extra_len, comment_len) = (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        out.insert(name, (system, mode));
        at += 46 + name_len + extra_len + comment_len;
    }
    out
}
