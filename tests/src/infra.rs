//! Real infrastructure for the integration tests: a nats-server with JetStream per test
//! ([`NatsServer`]) and a fresh PostgreSQL database per test ([`Postgres`]).
//!
//! * nats-server: `$COURIER_NATS_SERVER`, else `<workspace>/target/tools/venv/bin/nats-server`
//!   (what `cargo xtask provision` installs), else `nats-server` on `PATH`.
//! * PostgreSQL: with `$COURIER_TEST_PG_URL` (an admin URL, set by `cargo xtask test`) each
//!   [`Postgres::fresh`] creates a database on that cluster; without it, the first call
//!   starts a private cluster for this test process (`initdb` from `$COURIER_PG_BINDIR` or
//!   the newest `/usr/lib/postgresql/*/bin`), which is stopped and removed when the process
//!   ends, however it ends.
//! * [`PgCluster`]: a cluster of its own that can be crashed (`pg_ctl stop -m immediate`) and
//!   started again, for the chaos run.
//!
//! Working directories live under `<target>/courier-test/`. When the tests run as root, the
//! PostgreSQL programs run as the `postgres` user (initdb refuses root).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping nats-server may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval of the readiness polling loops.
const POLL: Duration = Duration::from_millis(25);

/// The workspace root (`CARGO_MANIFEST_DIR/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `<target>/courier-test`, created.
fn test_dir() -> Result<PathBuf> {
    let dir = target_dir().join("courier-test");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The nats-server program: `$COURIER_NATS_SERVER`, else the one `cargo xtask provision`
/// installs, else `nats-server` on `PATH`.
pub fn nats_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("COURIER_NATS_SERVER").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let venv = target_dir().join("tools/venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A name part unique to this process and call.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    use std::hash::{BuildHasher, RandomState};
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = RandomState::new().hash_one((std::process::id(), n, SystemTime::now()));
    format!("{}-{n}-{:08x}", std::process::id(), hash as u32)
}

/// A random lowercase hex string of 16 digits.
fn random_hex() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        RandomState::new().hash_one((std::process::id(), n, SystemTime::now()))
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} is unreadable)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(32 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// NATS

/// A real nats-server child process with JetStream, on free ports, with its own store
/// directory. Killed, and its directory removed, when dropped.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with a fresh store and waits until JetStream is healthy.
    pub async fn start() -> Result<Self> {
        let bin = nats_server_path();
        let mut last_error = None;
        // Another process may take a free port before the server binds it: try new ports.
        for _ in 0..3 {
            let dir = test_dir()?.join(format!("nats-{}", unique()));
            fs::create_dir_all(dir.join("store"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let mut server = Self {
                bin: bin.clone(),
                dir,
                port: free_port()?,
                monitor_port: free_port()?,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:MONITOR_PORT` (`/healthz`, `/jsz`, `/varz`, …).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Whether the server process runs (it was started and has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit; kills it if it takes
    /// longer than 15 s. The store is kept for [`restart`](Self::restart).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // Failure means it is gone already; `wait` tells.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                status.context("waiting for nats-server to exit")?;
            }
            Err(_) => child.kill().await.context("killing nats-server")?,
        }
        Ok(())
    }

    /// Kills the server (SIGKILL: no flush, no goodbye) and reaps it. The store is kept for
    /// [`restart`](Self::restart), which then recovers it as after a crash.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same ports and store (its data kept), and waits until
    /// it is healthy. Stops it first if it runs.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    async fn launch(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("store"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {}: run `cargo xtask provision` (installs nats-server into \
                     target/tools/venv) or set COURIER_NATS_SERVER to a nats-server ≥ 2.11",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/healthz?js-enabled-only=true", self.monitor_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "nats-server exited ({status}) before it was ready; its log:\n{}",
                        tail(&self.log_path(), 20)
                    );
                }
            }
            if let Ok(response) = http.get(&url).send().await {
                if let Ok(body) = response.json::<serde_json::Value>().await {
                    if body["status"] == "ok" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server was not healthy within {READY_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log_path(), 20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it (SIGKILL is quick) so that no file is written while the store goes.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// A database created for one test (`courier_test_<random>`), on the cluster of
/// `$COURIER_TEST_PG_URL` or on this process's private cluster. It is not dropped
/// afterwards: the cluster is thrown away after the run.
#[derive(Debug, Clone)]
pub struct Postgres {
    url: String,
    name: String,
}

impl Postgres {
    /// Creates a new, empty database.
    pub async fn fresh() -> Result<Self> {
        let admin = match std::env::var("COURIER_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => private_cluster().await?.admin_url.clone(),
        };
        let name = format!("courier_test_{}", random_hex());
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name} on {admin}"))?;
        let _ = conn.close().await;
        Ok(Self {
            url: with_database(&admin, &name)?,
            name,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/courier_test_xxx`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes this database away, as an outage would: the server refuses new connections to
    /// it and terminates the open ones (pooled connections of the services included). Other
    /// databases of the cluster (other tests) are untouched. Undo with
    /// [`allow_connections`](Self::allow_connections).
    pub async fn refuse_connections(&self) -> Result<()> {
        let mut admin = self.admin().await?;
        sqlx::raw_sql(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(&mut admin)
        .await
        .context("ALTER DATABASE … ALLOW_CONNECTIONS false")?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .context("terminating the database's connections")?;
        let _ = admin.close().await;
        Ok(())
    }

    /// Ends the outage of [`refuse_connections`](Self::refuse_connections).
    pub async fn allow_connections(&self) -> Result<()> {
        let mut admin = self.admin().await?;
        sqlx::raw_sql(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&mut admin)
        .await
        .context("ALTER DATABASE … ALLOW_CONNECTIONS true")?;
        let _ = admin.close().await;
        Ok(())
    }

    /// A connection to the cluster's `postgres` database (as the same user).
    async fn admin(&self) -> Result<PgConnection> {
        let url = with_database(&self.url, "postgres")?;
        PgConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))
    }
}

/// `url` with its database (path) replaced by `db`, query kept.
fn with_database(url: &str, db: &str) -> Result<String> {
    let scheme_end = url
        .find("://")
        .with_context(|| format!("{url:?} is not a postgres:// URL"))?
        + 3;
    let rest = &url[scheme_end..];
    let (authority, after) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let query = after.find('?').map_or("", |i| &after[i..]);
    Ok(format!("{}{authority}/{db}{query}", &url[..scheme_end]))
}

/// This process's own cluster, started on first use.
#[derive(Debug)]
struct Cluster {
    admin_url: String,
    _postgres: std::process::Child,
    /// The write end of the reaper's stdin, never written: when this process ends (however
    /// it ends) the pipe closes and the reaper stops the server and removes its directory.
    _lifeline: std::process::ChildStdin,
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

async fn private_cluster() -> Result<&'static Cluster> {
    CLUSTER.get_or_try_init(start_private_cluster).await
}

/// Runs in the reaper: `$1` postmaster PID, `$2` data directory, `$3` directory to remove.
const REAPER: &str = r#"
cat >/dev/null 2>&1
kill -INT "$1" 2>/dev/null
i=0
while [ -e "$2/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e "$2/postmaster.pid" ]; then kill -KILL "$1" 2>/dev/null; fi
rm -rf "$3"
"#;

async fn start_private_cluster() -> Result<Cluster> {
    let (mut postgres, lifeline, admin_url, log) =
        tokio::task::spawn_blocking(spawn_private_cluster).await??;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = postgres.try_wait()? {
            bail!(
                "postgres exited ({status}) before accepting connections; its log:\n{}",
                tail(&log, 20)
            );
        }
        match PgConnection::connect(&admin_url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(err) if Instant::now() >= deadline => {
                bail!(
                    "postgres did not accept connections within {READY_TIMEOUT:?} ({err}); \
                     its log:\n{}",
                    tail(&log, 20)
                );
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
    Ok(Cluster {
        admin_url,
        _postgres: postgres,
        _lifeline: lifeline,
    })
}

type Spawned = (
    std::process::Child,
    std::process::ChildStdin,
    String,
    PathBuf,
);

/// A new cluster directory under `<target>/courier-test/pg-<unique>`, owned by the user
/// the PostgreSQL programs run as, with an initialised `data` directory in it.
struct ClusterDir {
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    dir: PathBuf,
    data: PathBuf,
}

impl ClusterDir {
    fn init() -> Result<Self> {
        use std::os::unix::process::CommandExt;

        let bin = pg_bindir()?;
        let run_as = postgres_user()?;
        let dir = test_dir()?.join(format!("pg-{}", unique()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("chown postgres {}", dir.display()))?;
            make_traversable(&dir)?;
        }
        let data = dir.join("data");
        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .arg("-D")
            .arg(&data)
            .current_dir(&dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&dir);
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            bin,
            run_as,
            dir,
            data,
        })
    }
}

/// initdb, then `postgres` (as the postgres user when we are root) and its reaper.
fn spawn_private_cluster() -> Result<Spawned> {
    use std::os::unix::process::CommandExt;

    let ClusterDir {
        bin,
        run_as,
        dir,
        data,
    } = ClusterDir::init()?;
    let as_user = |cmd: &mut std::process::Command| {
        cmd.current_dir(&dir).stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
    };

    let port = free_port()?;
    let log = dir.join("postgres.log");
    let log_file = File::create(&log)?;
    let mut server = std::process::Command::new(bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&dir)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"]);
    as_user(&mut server);
    server.stdout(log_file.try_clone()?).stderr(log_file);
    let mut postgres = server.spawn().context("starting postgres")?;

    let reaper = std::process::Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("courier-pg-reaper")
        .arg(postgres.id().to_string())
        .arg(&data)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so that killing the test's group leaves it to clean up.
        .process_group(0)
        .spawn();
    let lifeline = match reaper {
        Ok(mut reaper) => reaper.stdin.take().context("the reaper's stdin")?,
        Err(err) => {
            let _ = postgres.kill();
            let _ = postgres.wait();
            let _ = fs::remove_dir_all(&dir);
            return Err(err).context("starting sh for the cluster's reaper");
        }
    };
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    Ok((postgres, lifeline, admin_url, log))
}

// ---------------------------------------------------------------------------------------
// A PostgreSQL cluster that can crash

/// A PostgreSQL cluster of its own, run with `pg_ctl`, that can be crashed and started again
/// on the same port and data directory ([`stop_immediate`](Self::stop_immediate): `pg_ctl
/// stop -m immediate`, no checkpoint, recovery from the WAL at the next start). For the chaos
/// run; tests use [`Postgres::fresh`].
///
/// Unlike the tests' cluster it keeps `synchronous_commit` on, as production does: with it
/// off, an immediate stop loses commits already acknowledged to the client (the WAL writer's
/// last fraction of a second), which would show as lost notes that no production server
/// loses. `fsync` stays off: the operating system survives an immediate stop, and so does
/// everything written to it.
///
/// Stopped and removed when dropped, or, however this process ends, by a reaper that stops
/// whatever postmaster the data directory names at that time.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    admin_url: String,
    _lifeline: std::process::ChildStdin,
}

/// Runs in the reaper of a [`PgCluster`]: `$1` data directory, `$2` directory to remove.
const PIDFILE_REAPER: &str = r#"
cat >/dev/null 2>&1
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null; fi
i=0
while [ -e "$1/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -n "$pid" ] && [ -e "$1/postmaster.pid" ]; then kill -KILL "$pid" 2>/dev/null; fi
rm -rf "$2"
"#;

impl PgCluster {
    /// initdb, then `pg_ctl start` on a free port; returns once it accepts connections.
    pub async fn start() -> Result<Self> {
        use std::os::unix::process::CommandExt;

        let (cluster, port) = tokio::task::spawn_blocking(|| -> Result<(ClusterDir, u16)> {
            Ok((ClusterDir::init()?, free_port()?))
        })
        .await??;
        let reaper = std::process::Command::new("sh")
            .arg("-c")
            .arg(PIDFILE_REAPER)
            .arg("courier-pg-reaper")
            .arg(&cluster.data)
            .arg(&cluster.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that killing ours leaves it to clean up.
            .process_group(0)
            .spawn();
        let lifeline = match reaper {
            Ok(mut reaper) => reaper.stdin.take().context("the reaper's stdin")?,
            Err(err) => {
                let _ = fs::remove_dir_all(&cluster.dir);
                return Err(err).context("starting sh for the cluster's reaper");
            }
        };
        let me = Self {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin: cluster.bin,
            run_as: cluster.run_as,
            dir: cluster.dir,
            data: cluster.data,
            port,
            _lifeline: lifeline,
        };
        me.start_again().await?;
        Ok(me)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new, empty database on this cluster.
    pub async fn fresh_database(&self) -> Result<Postgres> {
        let name = format!("courier_test_{}", random_hex());
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| format!("connecting to {}", self.admin_url))?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = conn.close().await;
        Ok(Postgres {
            url: with_database(&self.admin_url, &name)?,
            name,
        })
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, without a checkpoint;
    /// clients see their connections drop. Returns when the postmaster is gone.
    pub async fn stop_immediate(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"])
            .await
    }

    /// `pg_ctl start` on the same port and data directory (crash recovery first, after an
    /// immediate stop); returns once it accepts connections.
    pub async fn start_again(&self) -> Result<()> {
        let options = format!(
            "-k {} -p {} -h 127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.dir.display(),
            self.port
        );
        let log = self.dir.join("postgres.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "30",
            "-l",
            &log.to_string_lossy(),
            "-o",
            &options,
        ])
        .await
        .with_context(|| format!("its log:\n{}", tail(&log, 20)))
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().await.context("running pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let _ = cmd.status();
        // Closing the lifeline (dropped after this) makes the reaper remove the directory.
    }
}

/// `$COURIER_PG_BINDIR`, else the newest `/usr/lib/postgresql/<N>/bin` with the server.
fn pg_bindir() -> Result<PathBuf> {
    const TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
    let complete = |dir: &Path| TOOLS.iter().all(|t| dir.join(t).is_file());
    if let Some(dir) = std::env::var_os("COURIER_PG_BINDIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !complete(&dir) {
            bail!("COURIER_PG_BINDIR={} lacks one of {TOOLS:?}", dir.display());
        }
        return Ok(dir);
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name
            .split('.')
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if complete(&bin) && best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, bin));
        }
    }
    best.map(|(_, bin)| bin).context(
        "no PostgreSQL server under /usr/lib/postgresql/*/bin: run `cargo xtask test` (or \
         `cargo xtask provision`, which installs it as root), `apt-get install -y postgresql`, \
         or set COURIER_TEST_PG_URL to an admin URL of a running cluster",
    )
}

/// `Some((uid, gid))` of the `postgres` user when we are root (initdb refuses root).
fn postgres_user() -> Result<Option<(u32, u32)>> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if euid != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .stdin(Stdio::null())
            .output()
            .context("running id")?;
        if !out.status.success() {
            bail!(
                "running as root, and initdb refuses root, but there is no `postgres` user to \
                 run it as (apt-get install -y postgresql creates it)"
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// Gives others the search (x) bit on every ancestor of `dir` that lacks it, so that the
/// postgres user can reach it.
fn make_traversable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir.canonicalize()?;
    for ancestor in dir.ancestors().skip(1) {
        let mode = fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o011))
                .with_context(|| format!("chmod o+x {}", ancestor.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        let url = |u: &str| with_database(u, "db").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        assert_eq!(url("postgres://u:p@h:1"), "postgres://u:p@h:1/db");
        assert_eq!(
            url("postgres://u@h:1/x?sslmode=disable"),
            "postgres://u@h:1/db?sslmode=disable"
        );
        assert_eq!(
            url("postgres://u@h?sslmode=disable"),
            "postgres://u@h/db?sslmode=disable"
        );
        assert!(with_database("nonsense", "db").is_err());
    }

    #[tokio::test]
    async fn nats_has_jetstream_and_keeps_streams_across_a_restart() -> Result<()> {
        use async_nats::jetstream;

        let mut nats = NatsServer::start().await?;
        let url = nats.url();
        let client = async_nats::connect(&url).await?;
        let js = jetstream::new(client.clone());
        js.query_account().await?;
        js.create_stream(jetstream::stream::Config {
            name: "INFRA".into(),
            subjects: vec!["infra.>".into()],
            ..Default::default()
        })
        .await?;
        js.publish("infra.one", "hello".into()).await?.await?;
        drop(js);
        client.drain().await?;

        nats.stop().await?;
        assert!(!nats.is_running());
        nats.restart().await?;
        assert_eq!(nats.url(), url, "same port after a restart");

        let js = jetstream::new(async_nats::connect(&url).await?);
        let mut stream = js.get_stream("INFRA").await?;
        assert_eq!(stream.info().await?.state.messages, 1);
        Ok(())
    }

    #[tokio::test]
    async fn nats_keeps_acknowledged_messages_across_a_sigkill() -> Result<()> {
        use async_nats::jetstream;

        let mut nats = NatsServer::start().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        js.create_stream(jetstream::stream::Config {
            name: "CRASH".into(),
            subjects: vec!["crash.>".into()],
            ..Default::default()
        })
        .await?;
        js.publish("crash.one", "acknowledged".into())
            .await?
            .await?;
        drop(js);

        nats.kill().await?;
        assert!(!nats.is_running());
        nats.restart().await?;

        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        let mut stream = js.get_stream("CRASH").await?;
        assert_eq!(stream.info().await?.state.messages, 1);
        Ok(())
    }

    #[tokio::test]
    async fn pg_cluster_keeps_committed_rows_across_an_immediate_stop() -> Result<()> {
        let cluster = PgCluster::start().await?;
        let db = cluster.fresh_database().await?;
        let mut conn = PgConnection::connect(db.url()).await?;
        sqlx::raw_sql("CREATE TABLE t (v INT); INSERT INTO t VALUES (1), (2)")
            .execute(&mut conn)
            .await?;

        cluster.stop_immediate().await?;
        assert!(
            sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
            "the connection is gone after an immediate stop"
        );
        cluster.start_again().await?;

        let mut conn = PgConnection::connect(db.url()).await?;
        let sum: i64 = sqlx::query_scalar("SELECT sum(v) FROM t")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(sum, 3, "every acknowledged commit survives crash recovery");
        let port = cluster.port();
        assert!(db.url().contains(&format!(":{port}/")), "same port");
        Ok(())
    }

    #[tokio::test]
    async fn postgres_fresh_gives_distinct_working_databases() -> Result<()> {
        let a = Postgres::fresh().await?;
        let b = Postgres::fresh().await?;
        assert_ne!(a.url(), b.url());
        for db in [&a, &b] {
            let mut conn = PgConnection::connect(db.url()).await?;
            let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
            assert_eq!(one, 1);
            let name: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut conn)
                .await?;
            assert_eq!(name, db.name());
            conn.close().await?;
        }
        Ok(())
    }
}
