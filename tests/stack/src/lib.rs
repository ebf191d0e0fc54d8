//! Test-only: the local services the tests start themselves, and stop.
//!
//! [`Azurite`] runs the Azure Storage emulator installed from npm into the repo
//! (`node_modules/.bin/azurite`, pinned in `package.json`), the way production runs: HTTPS
//! with a certificate made on the fly, OAuth (`--oauth basic`, so bearer tokens are checked
//! for shape and audience), telemetry off, free ports on 127.0.0.1, its own data folder.
//! Nothing assumes ports 10000-10002 are free or that anything is already running.
//!
//! Dropping the handle stops the emulator's whole process group. A watchdog shell stops it
//! too if the test process dies without dropping (a panic that aborts, a kill).

pub mod demo;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The well-known emulator account name.
pub const ACCOUNT: &str = "devstoreaccount1";

pub struct Azurite {
    pub blob_port: u16,
    pub queue_port: u16,
    /// PEM of the CA that signed Azurite's certificate: trust it, and only it, in tests.
    pub ca_pem_path: PathBuf,
    dir: PathBuf,
    child: Child,
}

/// The repository root (where `node_modules/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Azurite {
    /// Starts Azurite and waits until both services accept connections.
    ///
    /// Panics with instructions if Azurite is not installed: tests that need it must not
    /// pass silently without it.
    pub fn start() -> Azurite {
        Self::start_with(None)
    }

    /// A second emulator (another storage account URL) whose TLS certificate is `other`'s,
    /// so one CA file serves both.
    pub fn start_sharing_certificate(other: &Azurite) -> Azurite {
        Self::start_with(Some(other))
    }

    fn start_with(other: Option<&Azurite>) -> Azurite {
        let bin = repo_root().join("node_modules/.bin/azurite");
        assert!(
            bin.exists(),
            "Azurite is not installed at {}: run `npm ci` at the repo root (scripts/test does it for you)",
            bin.display()
        );
        // Another process may grab a port between our probe and Azurite's bind: try again.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, other) {
                Ok(a) => return a,
                Err(e) => last_error = e,
            }
        }
        panic!("Azurite did not start: {last_error}");
    }

    fn try_start(bin: &Path, other: Option<&Azurite>) -> Result<Azurite, String> {
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kc-azurite-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let ca_pem_path = dir.join("ca.pem");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        match other {
            Some(o) => {
                for (from, to) in [(o.ca_pem_path.clone(), &ca_pem_path), (o.dir.join("cert.pem"), &cert_path), (o.dir.join("key.pem"), &key_path)] {
                    std::fs::copy(&from, to).map_err(|e| format!("copy {}: {e}", from.display()))?;
                }
            }
            None => make_certificates(&ca_pem_path, &cert_path, &key_path)?,
        }

        let (blob_port, queue_port, table_port) = (
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
        );
        let log = std::fs::File::create(dir.join("azurite.log")).map_err(|e| e.to_string())?;
        // The shell watches the test process and takes Azurite down with it if it dies.
        let script = r#"bin="$1"; parent="$2"; shift 2
"$bin" "$@" & child=$!
trap 'kill $child 2>/dev/null; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
kill $child 2>/dev/null; wait $child"#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(bin)
            .arg(std::process::id().to_string())
            .args(["--silent", "--disableTelemetry"])
            .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
            .args(["--queueHost", "127.0.0.1", "--queuePort", &queue_port.to_string()])
            .args(["--tableHost", "127.0.0.1", "--tablePort", &table_port.to_string()])
            .args(["--oauth", "basic"])
            .arg("--cert")
            .arg(&cert_path)
            .arg("--key")
            .arg(&key_path)
            .arg("--location")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command.spawn().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut azurite = Azurite { blob_port, queue_port, ca_pem_path, dir, child };

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = [blob_port, queue_port].iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return Ok(azurite);
            }
            if let Ok(Some(status)) = azurite.child.try_wait() {
                let log = std::fs::read_to_string(azurite.dir.join("azurite.log")).unwrap_or_default();
                return Err(format!("Azurite exited with {status}: {log}"));
            }
            if Instant::now() > deadline {
                return Err("Azurite did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `https://127.0.0.1:<port>/devstoreaccount1`: no trailing slash (Azurite answers a bare
    /// 400 to one).
    pub fn blob_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/{ACCOUNT}", self.blob_port)
    }

    pub fn queue_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/{ACCOUNT}", self.queue_port)
    }

    /// The process id of the watchdog shell, which leads the emulator's process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        // The whole group: the shell and node.
        let _ = Command::new("kill").arg("-TERM").arg("--").arg(format!("-{}", self.child.id())).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{}", self.child.id())).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a server certificate it signs for 127.0.0.1 and localhost.
fn make_certificates(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "kc test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;

    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    std::fs::write(ca_path, ca.pem()).map_err(|e| e.to_string())?;
    std::fs::write(cert_path, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(key_path, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(())
}

/// A port on 127.0.0.1 nothing listens on (a moment ago).
pub fn free_loopback_port() -> u16 {
    free_port().expect("a free port")
}

/// Whether something listens on 127.0.0.1:`port` within ten seconds (a `kc serve` started).
pub async fn wait_listening(port: u16) -> bool {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// `kc <args>` with the settings `kc serve` has on this Azurite (endpoints, the emulator
/// credential, its CA): what an operator of the local stack runs. `kc` is the binary's path.
pub fn kc_command(kc: impl AsRef<std::ffi::OsStr>, azurite: &Azurite, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(kc);
    c.args(args)
        .env("KC_BLOB_ENDPOINT", azurite.blob_endpoint())
        .env("KC_QUEUE_ENDPOINT", azurite.queue_endpoint())
        .env("KC_CREDENTIAL", "emulator")
        .env("KC_CA_CERT", &azurite.ca_pem_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    c
}
