//! A PostgreSQL cluster driven with `initdb` and `pg_ctl`.
//!
//! `initdb` refuses to run as root, so when we are root every server command runs as the
//! `postgres` user (set with `Command::uid`/`gid`, i.e. setuid in the child: signals reach
//! the program itself), in a directory that user owns, whose parents it can traverse.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::proc::{output, tail};
use crate::provision::PgTools;

/// The user the server runs as, when it differs from ours.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `postgres` when we are root, else nobody (we run it ourselves).
    pub fn detect() -> Result<Option<Self>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")
            .context("looking up the postgres user")?
            .context(
                "running as root, and initdb refuses root, but there is no `postgres` user to \
                 run it as (apt-get install -y postgresql creates it; or: useradd -r postgres)",
            )?;
        Ok(Some(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }
}

/// A cluster: `<dir>/data`, its Unix socket in `<dir>`.
#[derive(Debug)]
pub struct Cluster {
    tools: PgTools,
    run_as: Option<RunAs>,
    dir: PathBuf,
    log: PathBuf,
    port: Option<u16>,
    /// Whether the server was started by `pg_ctl start` (and so is stopped with `pg_ctl
    /// stop`), rather than run in the foreground by a supervisor that owns the process.
    pg_ctl: bool,
}

impl Cluster {
    /// Prepares `dir` (created, owned by the server's user, reachable) and `log`.
    pub fn new(tools: PgTools, dir: PathBuf, log: PathBuf) -> Result<Self> {
        let run_as = RunAs::detect()?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if !log.exists() {
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        }
        if let Some(user) = run_as {
            for path in [&dir, &log] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
            make_traversable(&dir)?;
        }
        Ok(Self {
            tools,
            run_as,
            dir,
            log,
            port: None,
            pg_ctl: false,
        })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command for a PostgreSQL tool, run as the server's user.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.tools.tool(tool));
        cmd.current_dir(&self.dir);
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Runs `initdb` unless the cluster exists; true when it made one.
    pub fn init_if_needed(&self) -> Result<bool> {
        let data = self.data();
        if let Ok(version) = fs::read_to_string(data.join("PG_VERSION")) {
            let version = version.trim();
            if version != self.tools.major.to_string() {
                bail!(
                    "the cluster in {} was made by PostgreSQL {version}, but the server found \
                     is {}; remove {} to start afresh",
                    paths::display(&data),
                    self.tools.version,
                    paths::display(&self.dir)
                );
            }
            return Ok(false);
        }
        output(
            self.command("initdb")
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
                .arg("-D")
                .arg(&data),
            "initdb",
        )?;
        Ok(true)
    }

    /// Whether a server runs on this cluster (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(self.data())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it accepts connections.
    /// `settings` are extra `-c name=value` options.
    pub fn start(&mut self, port: u16, settings: &[&str]) -> Result<()> {
        let mut opts = format!("-p {port} -h 127.0.0.1 -k '{}'", self.dir.display());
        for setting in settings {
            opts.push_str(&format!(" -c {setting}"));
        }
        let result = output(
            self.command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &opts]),
            "pg_ctl start",
        );
        if let Err(err) = result {
            // `pg_ctl -w` may give up on a server that still comes up later.
            if self.is_running() {
                let _ = self.stop_any();
            }
            bail!(
                "{err:#}\n--- {} ---\n{}",
                paths::display(&self.log),
                tail(&self.log, 20)
            );
        }
        self.port = Some(port);
        self.pg_ctl = true;
        Ok(())
    }

    /// The server in the foreground on 127.0.0.1:`port` (`postgres -D …`), for a supervisor
    /// that owns the process: it logs to its stdout, stops on SIGINT (fast shutdown), and
    /// `stop` leaves it alone. From now on `url` and `create_database` use `port`.
    pub fn foreground(&mut self, port: u16, settings: &[&str]) -> Foreground {
        self.port = Some(port);
        self.pg_ctl = false;
        let mut args: Vec<String> = vec![
            "-D".into(),
            self.data().display().to_string(),
            "-p".into(),
            port.to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-k".into(),
            self.dir.display().to_string(),
        ];
        for setting in settings {
            args.extend(["-c".into(), (*setting).to_string()]);
        }
        Foreground {
            postgres: self.tools.tool("postgres"),
            args,
            dir: self.dir.clone(),
            run_as: self.run_as,
        }
    }

    /// Whether the server on our port accepts connections (`pg_isready`): not before crash
    /// recovery finished.
    pub fn accepting(&self) -> bool {
        let Some(port) = self.port else {
            return false;
        };
        Command::new(self.tools.tool("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-t", "2", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pg_ctl stop -m fast`, if `pg_ctl` started it.
    pub fn stop(&mut self) -> Result<()> {
        if self.port.take().is_some() && self.pg_ctl {
            self.stop_any()?;
        }
        Ok(())
    }

    /// Stops whatever server runs on this cluster (a leftover of an earlier run, say).
    pub fn stop_any(&self) -> Result<()> {
        output(
            self.command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "60"]),
            "pg_ctl stop",
        )
        .map(drop)
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}",
            self.port.unwrap_or_default()
        )
    }

    /// Creates database `name` unless it exists; true when it made it.
    pub fn create_database(&self, name: &str) -> Result<bool> {
        let psql = |sql: &str| {
            output(
                Command::new(self.tools.tool("psql"))
                    .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                    .arg("-p")
                    .arg(self.port.unwrap_or_default().to_string())
                    .arg("-c")
                    .arg(sql),
                "psql",
            )
        };
        let exists = psql(&format!(
            "SELECT 1 FROM pg_database WHERE datname = '{name}'"
        ))?;
        if exists.trim() == "1" {
            return Ok(false);
        }
        psql(&format!("CREATE DATABASE \"{name}\""))?;
        Ok(true)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("xtask: stopping PostgreSQL: {err:#}");
        }
    }
}

/// How to run a cluster's server in the foreground ([`Cluster::foreground`]).
#[derive(Debug, Clone)]
pub struct Foreground {
    postgres: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    run_as: Option<RunAs>,
}

impl Foreground {
    /// The `postgres` command, run as the cluster's user.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.postgres);
        cmd.args(&self.args).current_dir(&self.dir);
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }
}

/// Gives "others" the search (x) bit on every ancestor of `dir` that lacks it, so that the
/// postgres user can reach its directory.
fn make_traversable(dir: &Path) -> Result<()> {
    let dir = dir.canonicalize()?;
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            eprintln!(
                "xtask: chmod o+x {} (so that the postgres user can reach {})",
                ancestor.display(),
                dir.display()
            );
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o011))?;
        }
    }
    Ok(())
}
