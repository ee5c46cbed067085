//! Several baton processes (the built binary), their own redis-server on a free
//! port, and a fresh PostgreSQL database: a real cluster on one machine. Every
//! process is killed when the harness is dropped. Needs `BATON_TEST_POSTGRES`
//! (scripts/test sets it) and `redis-server` on the PATH. `TEST_LOG=1` shows the
//! instances' logs.
//!
//! [`Cluster::start_with`] can put a [`Proxy`] between each instance and Redis
//! and/or PostgreSQL (one per instance and service, so one instance alone can be
//! cut off), run the cluster on an [`OwnPostgres`] that the test may stop, give
//! Redis extra settings and the instances extra environment. The invariant: nothing
//! here touches the shared Redis or stops the shared PostgreSQL; what a test breaks
//! is its own.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::common::{Rest, fresh_postgres_database};
use crate::proxy::Proxy;

/// The admin token every test instance accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The baton binary, with none of baton's settings inherited from the developer's
/// environment (a `BATON_SECRET` or `DATABASE_URL` there must not change what a test
/// sees): the test sets every one it needs.
pub fn baton_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("BATON_") || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// One baton process serving alone (no Redis) on `port`, its data in `dir`, with the
/// test's settings `env` (`DATABASE_URL` among them, or SQLite in `dir`); killed when
/// dropped.
pub fn serve_alone(port: u16, dir: &std::path::Path, env: &[(&str, &str)]) -> Child {
    baton_command()
        .arg("serve")
        .env("BATON_LISTEN", format!("127.0.0.1:{port}"))
        .env("BATON_DATA_DIR", dir)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("the baton binary runs")
}

fn output() -> Stdio {
    if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() }
}

/// The Redis topology a cluster runs on: `BATON_TEST_REDIS` = `standalone` (the
/// default), `cluster` (three masters, three replicas) or `sentinel` (a master, a
/// replica, three Sentinels). scripts/test runs the cluster tests on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Cluster,
    Sentinel,
    /// One Redis that speaks TLS only (`rediss://`), its CA given to the instances
    /// as `SSL_CERT_FILE`.
    Tls,
}

impl Topology {
    pub fn from_env() -> Topology {
        match std::env::var("BATON_TEST_REDIS").as_deref() {
            Err(_) | Ok("") | Ok("standalone") => Topology::Standalone,
            Ok("cluster") => Topology::Cluster,
            Ok("sentinel") => Topology::Sentinel,
            Ok("tls") => Topology::Tls,
            Ok(other) => panic!("BATON_TEST_REDIS={other}: standalone, cluster, sentinel or tls"),
        }
    }
}

/// A Redis of the test's own, never the shared one. Standalone, a redis-server this
/// process runs (so that a test can kill it and start it again, with extra
/// arguments); a Redis Cluster or a Sentinel set, what `scripts/redis-topology`
/// starts in a temporary directory, stopped when this is dropped.
pub struct Redis {
    /// The standalone server's port (what proxies forward to); a topology's first
    /// server.
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    /// A topology's directory (see scripts/redis-topology).
    dir: Option<tempfile::TempDir>,
}

/// scripts/redis-topology, which starts and stops the Redis Cluster and Sentinel sets.
fn topology_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis-topology")
}

impl Redis {
    /// The topology given; extra arguments only apply to a standalone server.
    pub async fn start_topology(topology: Topology, extra: Vec<String>) -> Redis {
        let ports = |n| (0..n).map(|_| free_port().to_string()).collect::<Vec<_>>();
        let (kind, ports) = match topology {
            Topology::Standalone => return Self::start_on(free_port(), extra).await,
            Topology::Cluster => ("cluster", ports(12)),
            Topology::Sentinel => ("sentinel", ports(5)),
            Topology::Tls => ("tls", ports(1)),
        };
        assert!(extra.is_empty(), "extra redis-server arguments are for a standalone server");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(topology_script())
            .args(["up", kind])
            .arg(dir.path())
            .args(&ports)
            .output()
            .await
            .expect("scripts/redis-topology runs");
        assert!(out.status.success(), "scripts/redis-topology up {kind}: {}", String::from_utf8_lossy(&out.stderr));
        let port = ports[0].parse().unwrap();
        Redis { port, child: None, extra, dir: Some(dir) }
    }

    async fn start_on(port: u16, extra: Vec<String>) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&extra)
            .stdout(output())
            .stderr(output())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let redis = Redis { port, child: Some(child), extra, dir: None };
        redis.wait_ready().await;
        redis
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The REDIS_URL the instances take.
    pub fn url(&self) -> String {
        match &self.dir {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(dir) => std::fs::read_to_string(dir.path().join("url")).unwrap().trim().to_owned(),
        }
    }

    /// The CA that signed a TLS topology's certificate.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|dir| dir.path().join("ca.pem")).filter(|ca| ca.exists())
    }

    /// The redis-servers' ports (a standalone server's alone).
    pub fn servers(&self) -> Vec<u16> {
        match &self.dir {
            None => vec![self.port],
            Some(dir) => ports_in(&dir.path().join("servers")),
        }
    }

    /// The Sentinels' ports.
    pub fn sentinels(&self) -> Vec<u16> {
        self.dir.as_ref().map(|dir| ports_in(&dir.path().join("sentinels"))).unwrap_or_default()
    }

    /// The servers that are masters now (those that answer).
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters = Vec::new();
        for port in self.servers() {
            if cli(port, &["role"]).await.lines().next() == Some("master") {
                masters.push(port);
            }
        }
        masters
    }

    /// Messages published so far with SPUBLISH (all baton publishes; Sentinels
    /// PUBLISH their hellos) on every master, from `INFO commandstats`.
    pub async fn spublishes(&self) -> u64 {
        let mut total = 0;
        for port in self.masters().await {
            total += self.calls(port, "spublish").await;
        }
        total
    }

    /// Kills the standalone Redis (SIGKILL: nothing saved, every connection cut).
    pub async fn kill(&mut self) {
        self.child
            .as_mut()
            .expect("kill() is for a standalone Redis: kill_server() for a topology's")
            .kill()
            .await
            .unwrap();
    }

    /// Starts the standalone Redis again on the same port, empty.
    pub async fn start_again(&mut self) {
        *self = Self::start_on(self.port, self.extra.clone()).await;
    }

    /// Kills one of a topology's servers (or Sentinels) with SIGKILL.
    pub fn kill_server(&self, port: u16) {
        let dir = self.dir.as_ref().expect("a topology's server");
        let pid = std::fs::read_to_string(dir.path().join(format!("{port}.pid"))).unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        // SAFETY: a plain kill(2) of a process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
    }

    /// The Redis Cluster's hash slot of a key or channel name.
    pub async fn slot_of(&self, name: &str) -> u16 {
        cli(self.port, &["cluster", "keyslot", name]).await.trim().parse().unwrap()
    }

    /// The master serving a slot now, as a live master sees it.
    pub async fn master_of(&self, slot: u16) -> u16 {
        let masters = self.masters().await;
        let nodes = cli(masters[0], &["cluster", "nodes"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&slot),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if owns {
                return node_port(fields[1]);
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// Moves one slot, with its keys, from its master to the master on `to`, the
    /// way `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE, NODE).
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        self.migrate_slot_holding(slot, to, Duration::ZERO).await;
    }

    /// [`Redis::migrate_slot`], holding the slot half-moved for `hold` once its keys
    /// are on `to`: meanwhile the old master answers a command on them with `ASK`,
    /// which a client must follow (`ASKING`, then the command, on `to`).
    pub async fn migrate_slot_holding(&self, slot: u16, to: u16, hold: Duration) {
        let from = self.master_of(slot).await;
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let id = |port| async move { cli(port, &["cluster", "myid"]).await.trim().to_owned() };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let (slot_arg, to_arg) = (slot.to_string(), to.to_string());
        cli(to, &["cluster", "setslot", &slot_arg, "importing", &from_id]).await;
        cli(from, &["cluster", "setslot", &slot_arg, "migrating", &to_id]).await;
        loop {
            let keys = cli(from, &["cluster", "getkeysinslot", &slot_arg, "100"]).await;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1", &to_arg, "", "0", "5000", "keys"];
            args.extend(keys);
            cli(from, &args).await;
        }
        tokio::time::sleep(hold).await;
        for port in self.masters().await {
            cli(port, &["cluster", "setslot", &slot_arg, "node", &to_id]).await;
        }
    }

    /// How many times a command was called on the server on `port`, from `INFO
    /// commandstats` (e.g. `asking`: redirections a client followed there).
    pub async fn calls(&self, port: u16, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:");
        cli(port, &["info", "commandstats"])
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.split("calls=").nth(1)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Makes the cluster's master on `master` announce `port` as its own (its bus
    /// port unchanged), and waits until every master's map of slots says so: from
    /// then on clients reach it there.
    pub async fn announce_through(&self, master: u16, port: u16) {
        let bus = cli(master, &["config", "get", "cluster-port"]).await;
        let bus = bus.lines().nth(1).expect("cluster-port is set").trim().to_owned();
        cli(master, &["config", "set", "cluster-announce-bus-port", &bus]).await;
        cli(master, &["config", "set", "cluster-announce-port", &port.to_string()]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let announced = format!("127.0.0.1:{port}@");
        loop {
            let mut seen = 0;
            for m in self.masters().await {
                seen += cli(m, &["cluster", "nodes"]).await.contains(&announced) as usize;
            }
            if seen == self.masters().await.len() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the masters did not learn the announced port");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Sentinels' master now (what `SENTINEL get-master-addr-by-name` says).
    pub async fn sentinel_master(&self) -> u16 {
        let sentinel = self.sentinels()[0];
        let addr = cli(sentinel, &["sentinel", "get-master-addr-by-name", "baton"]).await;
        addr.lines().nth(1).expect("the Sentinels know the master").trim().parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::process::Command::new(topology_script()).arg("down").arg(dir.path()).status();
        }
    }
}

/// The ports listed in one of scripts/redis-topology's files, one a line.
fn ports_in(file: &std::path::Path) -> Vec<u16> {
    std::fs::read_to_string(file).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The port of a `CLUSTER NODES` address, `ip:port@bus`.
fn node_port(addr: &str) -> u16 {
    addr.split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

/// What redis-cli answers on `port` (raw), empty if it does not.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .await
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One baton process, and the proxies it reaches Redis and PostgreSQL through
/// (when the cluster was started with them).
pub struct Instance {
    pub name: String,
    pub base: String,
    pub port: u16,
    pub redis_proxy: Option<Proxy>,
    pub postgres_proxy: Option<Proxy>,
    child: Child,
}

impl Instance {
    /// Kills the process with SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to exit on its own; its exit status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait()).await.expect("the instance exits in time").unwrap()
    }

    /// Its exit status if it exits within `within`, else None (it still runs).
    pub async fn exits_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait()).await.ok().map(|status| status.unwrap())
    }

    pub fn rest(&self) -> Rest {
        Rest::new(self.base.clone())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the instance is running")
    }
}

/// How [`Cluster::start_with`] builds the cluster.
#[derive(Default)]
pub struct Options {
    /// Each instance reaches Redis through its own [`Proxy`].
    pub proxy_redis: bool,
    /// Each instance reaches PostgreSQL through its own [`Proxy`].
    pub proxy_postgres: bool,
    /// The database is on an [`OwnPostgres`] (kept in [`Cluster::own_postgres`]),
    /// which the test may stop and start.
    pub own_postgres: bool,
    /// Extra `redis-server` arguments (standalone only).
    pub redis_args: Vec<String>,
    /// The Redis topology; `BATON_TEST_REDIS`'s when None.
    pub redis: Option<Topology>,
    /// On a Redis Cluster: one master, not the one serving this key or channel's
    /// slot, is reached by every client through a [`Proxy`] (it announces the
    /// proxy's port as its own), so that a test can break that one shard.
    pub proxy_one_shard: Option<&'static str>,
    /// Extra environment for every instance (after the defaults, so it wins).
    pub env: Vec<(&'static str, String)>,
}

pub struct Cluster {
    pub redis: Redis,
    pub instances: Vec<Instance>,
    pub database_url: String,
    /// Set with [`Options::own_postgres`]; dropped after the instances.
    pub own_postgres: Option<OwnPostgres>,
    /// Set with [`Options::proxy_one_shard`]: the master every instance reaches
    /// through the proxy, and the proxy.
    pub shard_proxy: Option<(u16, Proxy)>,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    /// Starts Redis, a fresh database and `n` instances, and waits until every
    /// instance is ready.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, Options::default()).await
    }

    /// Like [`Cluster::start`], built as `options` say.
    pub async fn start_with(n: usize, options: Options) -> Cluster {
        let own_postgres = if options.own_postgres { Some(OwnPostgres::start().await) } else { None };
        let admin = match &own_postgres {
            Some(pg) => pg.url(),
            None => std::env::var("BATON_TEST_POSTGRES")
                .ok()
                .filter(|s| !s.is_empty())
                .expect("the cluster tests need PostgreSQL: set BATON_TEST_POSTGRES (scripts/test does)"),
        };
        let database_url = fresh_postgres_database(&admin).await;
        let topology = options.redis.unwrap_or_else(Topology::from_env);
        assert!(
            topology == Topology::Standalone || !options.proxy_redis,
            "a Redis proxy is for a standalone Redis (a cluster's nodes are reached at the addresses they announce)"
        );
        let redis = Redis::start_topology(topology, options.redis_args).await;
        let shard_proxy = match options.proxy_one_shard {
            Some(avoiding) => {
                assert_eq!(topology, Topology::Cluster, "proxy_one_shard is for a Redis Cluster");
                let busy = redis.master_of(redis.slot_of(avoiding).await).await;
                let master = *redis.masters().await.iter().find(|m| **m != busy).unwrap();
                let proxy = Proxy::start_redis(master).await;
                redis.announce_through(master, proxy.port).await;
                Some((master, proxy))
            }
            None => None,
        };
        let mut cluster =
            Cluster { redis, instances: Vec::new(), database_url, own_postgres, shard_proxy, env: options.env };
        for i in 0..n {
            let redis_proxy =
                if options.proxy_redis { Some(Proxy::start_redis(cluster.redis.port).await) } else { None };
            let postgres_proxy = if options.proxy_postgres {
                let url = url::Url::parse(&cluster.database_url).unwrap();
                Some(Proxy::start(url.port().unwrap_or(5432)).await)
            } else {
                None
            };
            let (name, port) = (format!("baton-{i}"), free_port());
            let child = cluster.spawn(&name, port, redis_proxy.as_ref(), postgres_proxy.as_ref());
            let base = format!("http://127.0.0.1:{port}");
            let instance = Instance { name, base, port, redis_proxy, postgres_proxy, child };
            cluster.instances.push(instance);
        }
        for i in 0..n {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Kills instance `i` (SIGKILL) if it runs, and starts it again with the same
    /// name, port and proxies; waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.respawn(i).await;
        self.wait_ready(i).await;
    }

    /// Like [`Cluster::restart`], without waiting for `/readyz` (which may stay 503).
    pub async fn respawn(&mut self, i: usize) {
        let _ = self.instances[i].child.kill().await;
        let instance = &self.instances[i];
        let child =
            self.spawn(&instance.name, instance.port, instance.redis_proxy.as_ref(), instance.postgres_proxy.as_ref());
        self.instances[i].child = child;
    }

    /// Starts the baton process `name` on `port`, through the proxies given.
    fn spawn(&self, name: &str, port: u16, redis_proxy: Option<&Proxy>, postgres_proxy: Option<&Proxy>) -> Child {
        let redis_url = match redis_proxy {
            Some(proxy) => format!("redis://127.0.0.1:{}", proxy.port),
            None => self.redis.url(),
        };
        let database_url = match postgres_proxy {
            Some(proxy) => {
                let mut url = url::Url::parse(&self.database_url).unwrap();
                url.set_host(Some("127.0.0.1")).unwrap();
                url.set_port(Some(proxy.port)).unwrap();
                url.to_string()
            }
            None => self.database_url.clone(),
        };
        let mut command = baton_command();
        command
            .arg("serve")
            .env("BATON_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("BATON_INSTANCE_ID", name)
            .env("BATON_POSITION_INTERVAL", "1s")
            .env("BATON_DRAIN_WINDOW", "2s")
            .env("BATON_PRESENCE_GRACE", "3s")
            .env("BATON_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("BATON_CHAT_RATE", "1000")
            .env("BATON_CHAT_BURST", "1000")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        if let Some(ca) = self.redis.ca_file() {
            // rustls-native-certs reads the trusted roots from it.
            command.env("SSL_CERT_FILE", ca);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.stdout(output()).stderr(output()).kill_on_drop(true).spawn().expect("the baton binary runs")
    }

    pub async fn wait_ready(&self, i: usize) {
        let url = format!("{}/readyz", self.instances[i].base);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not become ready", self.instances[i].name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn base(&self, i: usize) -> &str {
        &self.instances[i].base
    }

    pub fn rest(&self, i: usize) -> Rest {
        self.instances[i].rest()
    }
}

/// A PostgreSQL server of the test's own (`initdb` in a temporary directory, on a
/// free port), so that a test can stop and start it; the shared one is never touched.
pub struct OwnPostgres {
    pub port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// Creates and starts the server (trust auth, user `postgres`).
    pub async fn start() -> OwnPostgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let pg = OwnPostgres { port: free_port(), bin, dir };
        as_postgres_owner(pg.dir.path());
        let data = pg.data().display().to_string();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"]).await;
        pg.start_again().await;
        pg
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs as the owner of the data (initdb and the
    /// server refuse to run as root).
    async fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command.args(args).output().await.expect("PostgreSQL's programs run");
        assert!(out.status.success(), "{program:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the (stopped) server again, on the same port, and waits until it answers.
    pub async fn start_again(&self) {
        let data = self.data().display().to_string();
        let sockets = self.dir.path().display().to_string();
        let options = format!("-p {} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", self.port);
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "start"]).await;
    }

    /// Stops the server at once (`-m immediate`, like a crash): every connection drops.
    pub async fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]).await;
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// The newest installed PostgreSQL's programs (Debian's layout).
fn postgres_bin_dir() -> std::path::PathBuf {
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (/usr/lib/postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    versions.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // SAFETY: geteuid only reads the process's credentials.
    unsafe { libc::geteuid() == 0 }
}

/// As root, gives the directory to the `postgres` user, who runs the server.
fn as_postgres_owner(dir: &std::path::Path) {
    if is_root() {
        let status = std::process::Command::new("chown").args(["postgres:postgres"]).arg(dir).status().unwrap();
        assert!(status.success(), "chown postgres {dir:?}");
    }
}
