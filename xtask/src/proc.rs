//! Child processes, signals, ports and logs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often the wait loops look again.
pub const POLL: Duration = Duration::from_millis(100);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Catches Ctrl-C, SIGTERM and SIGHUP: from now on they only set a flag that the caller polls.
pub fn catch_signals() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the signal handler")
}

/// Whether Ctrl-C, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A `cargo` command (`$CARGO`, else `cargo`) without the variables `cargo run` set for xtask
/// itself (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, …). Build scripts that watch them
/// (ring's does) would see them change, so a build started from xtask and one started from a
/// shell would each rebuild what the other built.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let ours = key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || matches!(
                    k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
        });
        if ours {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Sends `signal` to the process `pid`; a process that is already gone is no error.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Stops the children: its signal to each (SIGTERM for most programs, SIGINT for PostgreSQL's
/// fast shutdown), waits up to `grace` for all, then SIGKILL to the rest. Returns how each
/// ended, in order.
pub fn terminate_all(
    children: &mut [(&mut Child, Signal)],
    grace: Duration,
) -> Vec<Option<ExitStatus>> {
    let mut done: Vec<Option<ExitStatus>> = children
        .iter_mut()
        .map(|(c, _)| c.try_wait().ok().flatten())
        .collect();
    for ((child, sig), status) in children.iter().zip(&done) {
        if status.is_none() {
            signal(child.id(), *sig);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        for ((child, _), status) in children.iter_mut().zip(done.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().ok().flatten();
            }
        }
        if done.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(50));
    }
    for ((child, _), status) in children.iter_mut().zip(done.iter_mut()) {
        if status.is_none() {
            eprintln!(
                "xtask: pid {} did not stop within {grace:?}; SIGKILL",
                child.id()
            );
            let _ = child.kill();
            *status = child.wait().ok();
        }
    }
    done
}

/// Runs `cmd` to completion; fails (with its output) unless it exits 0. Returns its stdout.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Formats an exit status as `exit code N` or `signal N (SIGNAME)`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        _ => status.to_string(),
    }
}

/// The exit code a shell would report for `status` (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    }
}

/// Whether a process `pid` runs (exists and is not a zombie: a process whose parent is gone
/// may stay one where no init reaps it) and its name (`/proc/PID/comm`) starts with `name`.
pub fn alive_named(pid: u32, name: &str) -> bool {
    let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| {
            let comm = comm.trim();
            !comm.is_empty() && (name.starts_with(comm) || comm.starts_with(name))
        })
        .unwrap_or(false);
    named && running(pid)
}

/// Whether `pid` exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A pid file that lets one xtask command of a kind run at a time (`target/courier-dev/xtask.pid`
/// for `xtask up`); removed when dropped. A file naming a process that is gone is taken over.
#[derive(Debug)]
pub struct Lock {
    path: std::path::PathBuf,
}

impl Lock {
    /// Takes `path`, or fails naming `what` (`cargo xtask up`) and the pid that holds it.
    pub fn acquire(path: &Path, what: &str) -> Result<Self> {
        if let Ok(raw) = std::fs::read_to_string(path) {
            if let Ok(pid) = raw.trim().parse::<u32>() {
                if pid != std::process::id() && alive_named(pid, "xtask") {
                    bail!("another `{what}` is running (pid {pid}); stop it first (kill {pid})");
                }
            }
        }
        std::fs::write(path, std::process::id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
