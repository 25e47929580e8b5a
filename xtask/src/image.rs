//! `cargo xtask image`: builds the container image here, without a Docker daemon or a
//! registry, and runs the seed conversation with every service in a container of it.
//!
//! 1. **tools**: podman, buildah, mmdebstrap, runc and uidmap (`apt-get install` when missing
//!    and running as root), nats-server and PostgreSQL ([`provision`]).
//! 2. **base**: a minimal Debian of the host's release (its glibc is the one the binaries were
//!    linked against), made once by mmdebstrap and imported as `localhost/courier-base:<key>`;
//!    the key hashes the recipe (suite, architecture, variant, packages, dpkg options), so a
//!    changed recipe makes a new base. `--fresh-base` makes it again (security updates).
//! 3. **binaries**: `cargo build --release --bins`; the image holds the binaries that the
//!    Dockerfile's `COURIER_BINARIES` lists and some package of the workspace builds.
//! 4. **image**: `buildah bud --target runtime-prebuilt` of the Dockerfile, from the base, with
//!    the binaries as its context; then every binary of it answers `--help` in a container.
//! 5. **run**: PostgreSQL and nats-server on the host (as `xtask up` runs them); ingress,
//!    worker, sender and sandbox each in a container of the image (`podman run`, host network
//!    only); the seed conversation through the sandbox's control API, its replies asserted.
//!
//! Containers and images live in a storage of their own, `target/courier-image/storage` (vfs,
//! chroot isolation: no daemon, no overlay mounts); the containers are removed on the way out,
//! also after a failure. Each phase's time is printed. Exit status non-zero on any failure.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{check_alive, wait_ready};
use crate::http;
use crate::nats::Nats;
use crate::paths;
use crate::pg::Cluster;
use crate::proc::{self, describe, free_port, output, tail, Lock, POLL};
use crate::provision;
use crate::stack::{self, Stack};

/// `cargo xtask image` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The image's name.
    #[arg(long, default_value = "localhost/courier:local")]
    tag: String,
    /// Make the Debian base again even if one of the same recipe exists (to pick up the
    /// distribution's updates).
    #[arg(long)]
    fresh_base: bool,
    /// Build the image only; do not run the conversation.
    #[arg(long)]
    no_run: bool,
}

/// The programs the image is built and run with, and the Debian package of each.
const HOST_TOOLS: [(&str, &str); 5] = [
    ("podman", "podman"),
    ("buildah", "buildah"),
    ("mmdebstrap", "mmdebstrap"),
    ("runc", "runc"),
    ("newuidmap", "uidmap"),
];

/// The base: mmdebstrap's `essential` variant (dpkg, coreutils, a shell: no apt) plus what
/// the runtime stage needs: CA certificates (the sender calls Telegram over TLS) and
/// `groupadd`/`useradd` (the stage creates the user `courier`).
const BASE_VARIANT: &str = "essential";
const BASE_PACKAGES: [&str; 2] = ["ca-certificates", "passwd"];
/// No documentation but the copyrights, no manuals, no translations.
const BASE_DPKG_OPTIONS: [&str; 5] = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
];
/// Bumped when the base is made differently in a way the lists above do not show.
const BASE_RECIPE_VERSION: u32 = 1;

/// The services the conversation needs; each runs in its own container.
const SERVICES: [&str; 4] = [
    "courier-ingress",
    "courier-worker",
    "courier-sender",
    "courier-sandbox",
];
/// The label of the containers this command starts (and removes).
const LABEL: &str = "courier.xtask=image";
/// The chat (and user) of the conversation.
const CHAT: i64 = 1001;

/// `cargo xtask image`.
pub fn run(options: Options) -> Result<ExitCode> {
    proc::catch_signals()?;
    let dir = paths::target().join("courier-image");
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let _lock = Lock::acquire(&dir.join("xtask.pid"), "cargo xtask image")?;

    let started = Instant::now();
    let mut phases = Phases::default();
    let result = phases_in_order(&options, &dir, &logs, &mut phases);
    eprintln!();
    eprintln!("{}", phases.table(started.elapsed()));
    match result {
        Ok(summary) => {
            println!("xtask image: ok: {summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!(
                "xtask image: FAILED; the logs are in {}/",
                paths::display(&logs)
            );
            Err(err)
        }
    }
}

fn phases_in_order(
    options: &Options,
    dir: &Path,
    logs: &Path,
    phases: &mut Phases,
) -> Result<String> {
    // The conversation's servers too: a missing one fails before the build.
    let (engine, tools) = phases.time("tools", || {
        host_tools()?;
        let tools = if options.no_run {
            None
        } else {
            Some(provision::tools()?)
        };
        Ok((Engine::new(dir)?, tools))
    })?;
    let base = phases.time("base", || base(&engine, dir, logs, options.fresh_base))?;
    let binaries = phases.time("binaries", binaries)?;
    let size = phases.time("image", || {
        image(&engine, dir, logs, &base, &binaries, &options.tag)
    })?;
    let names: Vec<&str> = binaries.iter().map(|(name, _)| name.as_str()).collect();
    let built = format!(
        "{} ({:.0} MB: {})",
        options.tag,
        size as f64 / 1e6,
        names.join(", ")
    );
    eprintln!(
        "xtask image: to use it: {} images (or run, …)",
        engine.command_line()
    );
    let Some(tools) = tools else {
        return Ok(format!("built {built}"));
    };
    phases.time("run", || {
        conversation(&engine, &tools, dir, logs, &options.tag)
    })?;
    Ok(format!(
        "built {built}; ingress, worker, sender and sandbox, each in a container of it, \
         held the seed conversation"
    ))
}

/// How long each phase took, in order.
#[derive(Debug, Default)]
struct Phases {
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    /// Runs `f` as phase `name`, announcing it and noting its time.
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("xtask image: {name}…");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.done.push((name, took));
        if result.is_ok() && proc::interrupted() {
            bail!("interrupted");
        }
        result.with_context(|| format!("phase {name} (after {:.1}s)", took.as_secs_f64()))
    }

    fn table(&self, total: Duration) -> String {
        let mut out = String::from("phase      seconds\n");
        for (name, took) in &self.done {
            out.push_str(&format!("{name:<10} {:>7.1}\n", took.as_secs_f64()));
        }
        out.push_str(&format!("{:<10} {:>7.1}", "total", total.as_secs_f64()));
        out
    }
}

/// Installs the missing [`HOST_TOOLS`] with apt-get (as root), saying so.
fn host_tools() -> Result<()> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing: {}. Install them as root: {install}",
            missing.join(", ")
        );
    }
    eprintln!("xtask image: installing {} ({install})", missing.join(", "));
    output(Command::new("apt-get").arg("update"), "apt-get update")?;
    output(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &install,
    )?;
    for (program, package) in HOST_TOOLS {
        if which(program).is_none() {
            bail!("{install} succeeded, yet there is no {program} (package {package}) on PATH");
        }
    }
    Ok(())
}

/// `program`'s path on `$PATH` (and the sbin directories, where runc lives).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// podman and buildah on this command's own storage: vfs (works where overlay mounts do
/// not), no systemd (cgroupfs), no journal, runc.
#[derive(Debug)]
struct Engine {
    storage: PathBuf,
    /// Runtime state; short, under the temporary directory (conmon's sockets live there,
    /// and a Unix socket's path is limited to 107 bytes).
    runroot: PathBuf,
}

impl Engine {
    fn new(dir: &Path) -> Result<Self> {
        let storage = dir.join("storage");
        fs::create_dir_all(&storage)?;
        let runroot = std::env::temp_dir().join(format!(
            "courier-image-{:08x}",
            fnv1a(storage.to_string_lossy().as_bytes()) as u32
        ));
        Ok(Self { storage, runroot })
    }

    fn storage_args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.storage.clone().into(),
            "--runroot".into(),
            self.runroot.clone().into(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// The podman command on this storage, for people (`podman --root … --runtime runc`).
    fn command_line(&self) -> String {
        let podman = self.podman();
        std::iter::once(podman.get_program())
            .chain(podman.get_args())
            .map(|a| paths::display(Path::new(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(self.storage_args()).args([
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            "--runtime",
            "runc",
        ]);
        cmd
    }

    fn buildah(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(self.storage_args());
        cmd
    }

    /// `podman run --rm` of a labelled container on the host's network, with the limits
    /// that a container may set here (podman's default open-files limit is refused).
    fn run(&self) -> Command {
        let mut cmd = self.podman();
        cmd.args(["run", "--rm", "--pull=never", "--label", LABEL])
            .args(["--network", "host"])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ]);
        cmd
    }

    /// Whether the storage holds the image `name`.
    fn has_image(&self, name: &str) -> bool {
        self.podman()
            .args(["image", "exists", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Removes the containers this command started (by their label), running or not.
    fn remove_containers(&self) -> Result<()> {
        let ids = output(
            self.podman()
                .args(["ps", "--all", "--quiet", "--filter"])
                .arg(format!("label={LABEL}")),
            "podman ps",
        )?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            eprintln!("xtask image: removing {} container(s)", ids.len());
            output(
                self.podman()
                    .args(["rm", "--force", "--time", "5"])
                    .args(&ids),
                "podman rm",
            )?;
        }
        Ok(())
    }
}

/// 64-bit FNV-1a: a hash that stays the same across Rust releases (for cache keys).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The Debian release and architecture of this machine: the base must match them, the
/// binaries being linked against this glibc.
fn host_release() -> Result<(String, String)> {
    let os = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let field = |key: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    if field("ID").as_deref() != Some("debian") {
        bail!(
            "the base image is made with mmdebstrap from Debian, of the host's release (the \
             binaries are linked against its glibc), but this host is not Debian ({:?})",
            field("PRETTY_NAME").unwrap_or_default()
        );
    }
    let suite = field("VERSION_CODENAME")
        .filter(|s| !s.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME")?;
    let arch = output(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?
    .trim()
    .to_owned();
    Ok((suite, arch))
}

/// The base's tag: `localhost/courier-base:<suite>-<hash of the recipe>`.
fn base_tag(suite: &str, arch: &str) -> String {
    let recipe = format!(
        "{BASE_RECIPE_VERSION}\n{suite}\n{arch}\n{BASE_VARIANT}\n{}\n{}",
        BASE_PACKAGES.join(","),
        BASE_DPKG_OPTIONS.join("\n")
    );
    format!(
        "localhost/courier-base:{suite}-{:016x}",
        fnv1a(recipe.as_bytes())
    )
}

/// The base image: found in the storage, or made with mmdebstrap and imported.
fn base(engine: &Engine, dir: &Path, logs: &Path, fresh: bool) -> Result<String> {
    let (suite, arch) = host_release()?;
    let tag = base_tag(&suite, &arch);
    if engine.has_image(&tag) && !fresh {
        eprintln!("xtask image: base {tag} (made earlier)");
        return Ok(tag);
    }
    let tar = dir.join("base.tar");
    let log = logs.join("mmdebstrap.log");
    eprintln!(
        "xtask image: making the base with mmdebstrap ({suite}, {arch}, variant {BASE_VARIANT}, \
         + {}); log {}",
        BASE_PACKAGES.join(" "),
        paths::display(&log)
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={BASE_VARIANT}"))
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        .args(BASE_DPKG_OPTIONS.iter().map(|o| format!("--dpkgopt={o}")))
        .arg(format!("--architectures={arch}"))
        .arg(&suite)
        .arg(&tar);
    run_logged(&mut cmd, &log, "mmdebstrap")?;
    // Older bases go: the storage keeps one.
    let old = output(
        engine.podman().args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "localhost/courier-base",
        ]),
        "podman images",
    )?;
    for old in old.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let _ = output(engine.podman().args(["rmi", "--force", old]), "podman rmi");
    }
    output(
        engine.podman().arg("import").arg(&tar).arg(&tag),
        "podman import",
    )?;
    let _ = fs::remove_file(&tar);
    Ok(tag)
}

/// Runs `cmd` with its output in `log`; on failure, the end of the log is in the error.
fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!(
            "{what} failed ({})\n--- {} ---\n{}",
            describe(status),
            paths::display(log),
            tail(log, 30)
        );
    }
    Ok(())
}

/// The names in the Dockerfile's `ARG COURIER_BINARIES="…"` line.
fn listed_binaries(dockerfile: &str) -> Result<Vec<String>> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG COURIER_BINARIES="))
        .context("the Dockerfile has no `ARG COURIER_BINARIES=\"…\"` line")?;
    let names: Vec<String> = line
        .trim()
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!("the Dockerfile's COURIER_BINARIES is empty");
    }
    Ok(names)
}

/// The `[[bin]]` targets of the workspace's packages (`cargo metadata`).
fn workspace_binaries() -> Result<BTreeSet<String>> {
    let raw = output(
        proc::cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(paths::root()),
        "cargo metadata",
    )?;
    let doc: Value = serde_json::from_str(&raw).context("parsing cargo metadata")?;
    let mut bins = BTreeSet::new();
    for package in doc["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                bins.insert(name.to_owned());
            }
        }
    }
    Ok(bins)
}

/// Builds the release binaries; returns the image's: each listed one that the workspace
/// builds, with its path.
fn binaries() -> Result<Vec<(String, PathBuf)>> {
    let dockerfile = paths::root().join("Dockerfile");
    let listed = listed_binaries(
        &fs::read_to_string(&dockerfile)
            .with_context(|| format!("reading {}", dockerfile.display()))?,
    )?;
    let workspace = workspace_binaries()?;
    for service in SERVICES {
        if !listed.iter().any(|l| l == service) {
            bail!("the Dockerfile's COURIER_BINARIES lacks {service}");
        }
    }
    eprintln!("xtask image: cargo build --release --bins");
    let status = proc::cargo()
        .args(["build", "--release", "--bins"])
        .current_dir(paths::root())
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --bins failed ({})", describe(status));
    }
    let release = paths::target().join("release");
    let mut chosen = Vec::new();
    for name in listed {
        if !workspace.contains(&name) {
            eprintln!(
                "xtask image: no package of the workspace builds {name} (yet): it is not in \
                 the image"
            );
            continue;
        }
        let path = release.join(&name);
        if !path.is_file() {
            bail!(
                "cargo build --release --bins made no {}",
                paths::display(&path)
            );
        }
        chosen.push((name, path));
    }
    Ok(chosen)
}

/// Builds the image from `base` with `binaries`; checks its user and that each binary runs in
/// it. Returns its size in bytes.
fn image(
    engine: &Engine,
    dir: &Path,
    logs: &Path,
    base: &str,
    binaries: &[(String, PathBuf)],
    tag: &str,
) -> Result<u64> {
    // The build context: bin/<binary>, hard links where possible.
    let context = dir.join("context");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    }
    let bin = context.join("bin");
    fs::create_dir_all(&bin)?;
    for (name, path) in binaries {
        if fs::hard_link(path, bin.join(name)).is_err() {
            fs::copy(path, bin.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    let log = logs.join("build.log");
    eprintln!(
        "xtask image: buildah bud --target runtime-prebuilt (from {base}); log {}",
        paths::display(&log)
    );
    run_logged(
        engine
            .buildah()
            .args([
                "bud",
                "--isolation",
                "chroot",
                "--network",
                "host",
                "--pull=never",
                "--target",
                "runtime-prebuilt",
                "--build-arg",
            ])
            .arg(format!("RUNTIME_IMAGE={base}"))
            .arg("--file")
            .arg(paths::root().join("Dockerfile"))
            .args(["--tag", tag])
            .arg(&context),
        &log,
        "buildah bud",
    )?;
    // The image this one replaced, now untagged: its space back.
    let _ = output(
        engine.podman().args(["image", "prune", "--force"]),
        "podman image prune",
    );

    let inspect = output(
        engine.podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{.Size}}",
            tag,
        ]),
        "podman image inspect",
    )?;
    let (user, size) = inspect
        .trim()
        .split_once(' ')
        .with_context(|| format!("podman image inspect said {inspect:?}"))?;
    if user != "10001:10001" {
        bail!("the image runs as {user:?}, not as the Dockerfile's 10001:10001");
    }
    let size = size.parse().unwrap_or(0);

    // Every binary is there and runs (links, finds its libraries) in the image.
    let names: Vec<&str> = binaries.iter().map(|(n, _)| n.as_str()).collect();
    output(
        engine
            .run()
            .args(["--entrypoint", "sh", tag, "-c"])
            .arg(
                r#"for b do "$b" --help >/dev/null || { echo "$b --help failed in the image" >&2; exit 1; }; done"#,
            )
            .arg("sh")
            .args(&names),
        "every binary's --help in the image",
    )?;
    Ok(size)
}

/// The stack with the services in containers of `tag`, the seed conversation, then
/// everything stopped and the containers removed, whatever happened.
fn conversation(
    engine: &Engine,
    tools: &provision::Tools,
    dir: &Path,
    logs: &Path,
    tag: &str,
) -> Result<()> {
    let data = dir.join("stack");
    stack::kill_leftovers(&data);
    if data.join("pg/data/postmaster.pid").exists() {
        if let Ok(pg) = Cluster::new(tools.pg.clone(), data.join("pg"), logs.join("postgres.log")) {
            if pg.is_running() {
                let _ = pg.stop_any();
            }
        }
    }
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    fs::create_dir_all(&data)?;
    engine.remove_containers()?;

    let mut stack = Stack::default();
    let result = converse(engine, tools, &data, logs, tag, &mut stack);
    let stopping = Instant::now();
    stack.shutdown();
    let removed = engine.remove_containers();
    eprintln!(
        "xtask image: stopped and removed the containers in {:.1}s",
        stopping.elapsed().as_secs_f64()
    );
    result?;
    removed?;
    fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))
}

fn converse(
    engine: &Engine,
    tools: &provision::Tools,
    data: &Path,
    logs: &Path,
    tag: &str,
    stack: &mut Stack,
) -> Result<()> {
    // On the host, as `xtask up` runs them.
    let pg_log = logs.join("postgres.log");
    let _ = fs::remove_file(&pg_log);
    let mut pg = Cluster::new(tools.pg.clone(), data.join("pg"), pg_log.clone())?;
    pg.init_if_needed()?;
    stack.start_postgres(&mut pg, &pg_log, &[])?;
    pg.create_database("courier")?;
    let nats = Nats::new(&tools.nats_server, &data.join("nats"))?;
    stack.start_nats(&nats, &logs.join("nats.log"))?;
    stack.write_pids(data);

    let common: Vec<(&str, String)> = vec![
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", pg.url("courier")),
        // The development token and secret, which the sandbox accepts.
        ("COURIER_DEV", "1".into()),
        ("NO_COLOR", "1".into()),
    ];
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (worker, ingress, sender, sandbox) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let services = [
        (
            "worker",
            "courier-worker",
            vec![("COURIER_WORKER_HEALTH_ADDR", addr(worker))],
        ),
        (
            "ingress",
            "courier-ingress",
            vec![("COURIER_INGRESS_ADDR", addr(ingress))],
        ),
        (
            "sender",
            "courier-sender",
            vec![
                ("COURIER_SENDER_HEALTH_ADDR", addr(sender)),
                (
                    "COURIER_TELEGRAM_API_URL",
                    format!("http://{}", addr(sandbox)),
                ),
            ],
        ),
        (
            "sandbox",
            "courier-sandbox",
            vec![
                ("COURIER_SANDBOX_ADDR", addr(sandbox)),
                (
                    "COURIER_SANDBOX_WEBHOOK_URL",
                    format!("http://{}/webhook", addr(ingress)),
                ),
            ],
        ),
    ];
    for (name, binary, own) in services {
        let env: Vec<(String, String)> = common
            .iter()
            .chain(&own)
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut args: Vec<OsString> = vec!["--name".into(), format!("courier-image-{name}").into()];
        // `--env NAME` takes the value from podman's own environment: no secret on a command
        // line.
        for (key, _) in &env {
            args.push("--env".into());
            args.push(key.into());
        }
        args.push(tag.into());
        args.push(binary.into());
        let podman = engine.run();
        let program = podman.get_program().to_owned();
        let run_args: Vec<OsString> = podman.get_args().map(ToOwned::to_owned).collect();
        stack.spawn_command(
            name,
            Box::new(move || {
                let mut cmd = Command::new(&program);
                cmd.args(&run_args)
                    .args(&args)
                    .envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            }),
            logs,
        )?;
    }
    eprintln!(
        "xtask image: ingress, worker, sender and sandbox started in containers of {tag}; \
         waiting for /readyz"
    );
    wait_ready(
        stack,
        &[
            ("worker".to_owned(), worker),
            ("ingress".to_owned(), ingress),
            ("sender".to_owned(), sender),
            ("sandbox".to_owned(), sandbox),
        ],
    )?;

    let sandbox: std::net::SocketAddr = ([127, 0, 0, 1], sandbox).into();
    let say = |text: &str| -> Result<()> {
        let body = serde_json::json!({
            "chat_id": CHAT, "user_id": CHAT, "first_name": "Ada", "text": text,
        });
        let (status, answer) = http::post_json(sandbox, "/sandbox/messages", &body.to_string())
            .context("POST /sandbox/messages")?;
        if status != 200 {
            bail!("POST /sandbox/messages {text:?}: HTTP {status}: {answer}");
        }
        eprintln!("xtask image: Ada says {text:?}");
        Ok(())
    };
    say("/start")?;
    let replies = bot_replies(stack, sandbox, 1)?;
    expect(
        &replies[0],
        replies[0].starts_with("Hi, Ada!"),
        "the welcome",
    )?;
    say("buy milk")?;
    let replies = bot_replies(stack, sandbox, 2)?;
    expect(
        &replies[1],
        replies[1].starts_with("Saved your note"),
        "the note saved",
    )?;
    say("/history")?;
    let replies = bot_replies(stack, sandbox, 3)?;
    expect(
        &replies[2],
        // "1. 2026-12-02 04:35 UTC buy milk": the time in italics, the markup parsed away.
        replies[2].contains(" UTC buy milk"),
        "the history with the note and its time",
    )?;
    check_alive(stack)
}

fn expect(reply: &str, ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("expected {what}, but the bot said {reply:?}");
    }
    eprintln!("xtask image: the bot answers {reply:?}");
    Ok(())
}

/// Waits (30 s at most) until the bot has sent `n` messages to the chat; returns their texts.
/// More than `n` is a failure: every message gets exactly one reply.
fn bot_replies(stack: &mut Stack, sandbox: std::net::SocketAddr, n: usize) -> Result<Vec<String>> {
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    let path = format!("/sandbox/chats/{CHAT}/messages");
    loop {
        check_alive(stack)?;
        let replies: Vec<String> = match http::get(sandbox, &path) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .with_context(|| format!("GET {path}: {body}"))?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["from_bot"].as_bool() == Some(true))
                .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => Vec::new(),
        };
        if replies.len() > n {
            bail!(
                "the bot sent {} messages, {n} expected: {replies:?}",
                replies.len()
            );
        }
        if replies.len() == n {
            return Ok(replies);
        }
        if Instant::now() >= deadline {
            bail!(
                "the bot sent {} of {n} replies within {timeout:?}: {replies:?}",
                replies.len()
            );
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_lists_every_service() {
        let dockerfile = std::fs::read_to_string(paths::root().join("Dockerfile")).unwrap();
        let listed = listed_binaries(&dockerfile).unwrap();
        for service in SERVICES {
            assert!(listed.iter().any(|l| l == service), "{service}: {listed:?}");
        }
    }

    #[test]
    fn the_binary_list_is_parsed() {
        let listed = listed_binaries("FROM x\nARG COURIER_BINARIES=\"a  b\"\nRUN y\n").unwrap();
        assert_eq!(listed, ["a", "b"]);
        assert!(listed_binaries("FROM x\n").is_err());
        assert!(listed_binaries("ARG COURIER_BINARIES=\"\"\n").is_err());
    }

    #[test]
    fn the_base_tag_follows_the_recipe() {
        let tag = base_tag("bookworm", "amd64");
        assert!(tag.starts_with("localhost/courier-base:bookworm-"), "{tag}");
        assert_eq!(tag, base_tag("bookworm", "amd64"));
        assert_ne!(tag, base_tag("trixie", "amd64"));
        assert_ne!(tag, base_tag("bookworm", "arm64"));
        // FNV-1a's published test vector: the key must not change with the Rust release.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
