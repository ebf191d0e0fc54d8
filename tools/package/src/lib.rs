//! The Function App package: the zip the host mounts and runs.
//!
//! Layout at the zip's root (`shared/reference/deploy.md`): `host.json`, one folder per
//! function holding its `function.json`, and the handler binary at the path `host.json`'s
//! `customHandler.description.defaultExecutablePath` names. Nothing else.
//!
//! Linux hosting mounts the zip with fuse-zip, which applies Unix modes only to entries whose
//! "made by" system is Unix (3). The `zip` crate writes every entry as made by Unix and stores
//! the mode we give it, so the binary's entry carries 0755 and the host can execute it
//! without patching the bit at start-up (which only warns when it fails on a read-only mount).

pub use zip;

use std::io::Write;
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;

/// What went wrong, with the path involved.
#[derive(Debug)]
pub struct PackageError(pub String);

impl std::fmt::Display for PackageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackageError {}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> PackageError {
    PackageError(format!("{what}: {e}"))
}

/// The mode of the handler binary in the zip: rwxr-xr-x.
pub const EXECUTABLE_MODE: u32 = 0o755;
/// The mode of every other entry: rw-r--r--.
pub const FILE_MODE: u32 = 0o644;

/// The executable path `host.json` names (`customHandler.description.defaultExecutablePath`).
pub fn executable_path(host_json: &str) -> Result<String, PackageError> {
    let host: serde_json::Value = serde_json::from_str(host_json).map_err(|e| err("host.json", e))?;
    let path = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .ok_or_else(|| PackageError("host.json names no customHandler.description.defaultExecutablePath".into()))?;
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(PackageError(format!("defaultExecutablePath '{path}' must be a relative path inside the package")));
    }
    Ok(path.to_owned())
}

/// Writes the package for the app at `app_root` (host.json, functions/*/function.json) with
/// `binary` as the handler, to `out`. Returns the entry names written, in order.
pub fn build(app_root: &Path, binary: &Path, out: &Path) -> Result<Vec<String>, PackageError> {
    let host_json = std::fs::read_to_string(app_root.join("host.json")).map_err(|e| err(app_root.join("host.json").display(), e))?;
    let exe = executable_path(&host_json)?;
    let mut functions: Vec<(String, PathBuf)> = Vec::new();
    let dir = app_root.join("functions");
    for entry in std::fs::read_dir(&dir).map_err(|e| err(dir.display(), e))? {
        let path = entry.map_err(|e| err(dir.display(), e))?.path();
        let def = path.join("function.json");
        if def.is_file() {
            functions.push((path.file_name().unwrap().to_string_lossy().into_owned(), def));
        }
    }
    if functions.is_empty() {
        return Err(PackageError(format!("no functions/*/function.json under {}", app_root.display())));
    }
    functions.sort();

    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(parent.display(), e))?;
    }
    let tmp = out.with_extension("zip.partial");
    let file = std::fs::File::create(&tmp).map_err(|e| err(tmp.display(), e))?;
    let mut zip = zip::ZipWriter::new(file);
    let text = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(FILE_MODE);
    let executable = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(EXECUTABLE_MODE);
    let mut names = Vec::new();
    let mut add = |zip: &mut zip::ZipWriter<std::fs::File>, name: String, source: &Path, options: SimpleFileOptions| -> Result<(), PackageError> {
        let bytes = std::fs::read(source).map_err(|e| err(source.display(), e))?;
        zip.start_file(name.as_str(), options).map_err(|e| err(&name, e))?;
        zip.write_all(&bytes).map_err(|e| err(&name, e))?;
        names.push(name);
        Ok(())
    };
    add(&mut zip, "host.json".into(), &app_root.join("host.json"), text)?;
    for (name, def) in &functions {
        add(&mut zip, format!("{name}/function.json"), def, text)?;
    }
    add(&mut zip, exe, binary, executable)?;
    zip.finish().map_err(|e| err(tmp.display(), e))?;
    std::fs::rename(&tmp, out).map_err(|e| err(out.display(), e))?;
    Ok(names)
}

/// The highest `GLIBC_x.y[.z]` symbol version among the ELF's version needs (what the host's
/// Linux image must provide), read from the `.gnu.version_r` section. `None` for a binary that
/// needs no glibc version (static, or not ELF64 little-endian).
pub fn highest_glibc(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    // ELF64, little-endian.
    if elf.get(0..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let section = |i: usize| {
        let base = shoff + i * shentsize;
        Some((u32_at(base + 4)?, u64_at(base + 0x18)? as usize, u32_at(base + 0x28)? as usize, u32_at(base + 0x2c)?))
    };
    const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
    let mut best: Option<(Vec<u32>, String)> = None;
    for i in 0..shnum {
        let (kind, offset, link, info) = section(i)?;
        if kind != SHT_GNU_VERNEED {
            continue;
        }
        let (_, strings, _, _) = section(link as usize)?;
        let name_at = |o: usize| {
            let start = strings + o;
            let end = start + elf.get(start..)?.iter().position(|&b| b == 0)?;
            std::str::from_utf8(&elf[start..end]).ok()
        };
        let mut need = offset;
        for _ in 0..info {
            let count = u16_at(need + 2)?;
            let mut aux = need + u32_at(need + 8)? as usize;
            for _ in 0..count {
                if let Some(version) = name_at(u32_at(aux + 8)? as usize).and_then(|n| n.strip_prefix("GLIBC_")) {
                    if let Ok(parts) = version.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>() {
                        if best.as_ref().is_none_or(|(b, _)| parts > *b) {
                            best = Some((parts, format!("GLIBC_{version}")));
                        }
                    }
                }
                aux += u32_at(aux + 12)? as usize;
            }
            let next = u32_at(need + 12)? as usize;
            if next == 0 {
                break;
            }
            need += next;
        }
    }
    best.map(|(_, name)| name)
}
