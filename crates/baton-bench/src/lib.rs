//! `baton-bench`: a load generator for any server that implements the wire contract
//! (PROTOCOL.md, as docs/protocol.md states it). It registers users and builds a community
//! with its channels over REST, connects WebSockets to `/socket/commu-{id}`, joins, sends
//! chat events at a fixed rate and measures, in one process, what came back: acks,
//! deliveries, losses, duplicates, latencies, and (given `--server-pid`) the server's CPU
//! time and memory.
//!
//! Deliberately lean, and built on no other crate of the workspace: not on `baton` (it
//! measures baton and its Node.js peer alike, through the wire contract only) and not on
//! `baton-client`. That client gives every connection a reader task, a writer task and a
//! queue, and parses every frame into JSON; with thousands of connections on the one core
//! the load generator gets, that would make the bench, not the server, the bottleneck.
//! [`conn`] runs each connection as one task that parses only the fields it measures.
//!
//! - [`setup`]: the REST calls that prepare a run (bounded concurrency: each registration
//!   costs the server an argon2 hash).
//! - [`conn`]: one connection, one tokio task: a lean Socket.IO-over-WebSocket client that
//!   parses only what it needs from each frame.
//! - [`procfs`]: the server's CPU time and RSS from `/proc`.
//! - [`stats`]: the report: counts, percentiles and derived figures.
//!
//! A run goes: set up over REST, connect every socket (waiting for `rejoined`), then join
//! (all sockets connect before any joins, so the server's remembered joins, kept per user,
//! do not put a socket in a room it was not meant for), then send for `--duration`
//! seconds, then wait for the last acks and deliveries, then print one JSON line.

mod conn;
mod procfs;
mod setup;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use conn::{Counters, Ctx, Phase, SenderSpec, Spec};
pub use stats::Report;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One big room: every client in one channel, `--senders` of them sending.
    Fanout,
    /// Many small rooms of `--room-size` clients, one sender in each.
    Rooms,
    /// Idle connections joined to one channel, held for `--duration`: server memory per connection.
    Idle,
    /// One channel per sender; each sender waits for the ack (sent after the commit)
    /// before its next message: acks per second.
    Persist,
    /// Small rooms as in `rooms`, spread over several instances (`--url` repeated), while one
    /// instance is drained (`--drain-pid`): its clients reconnect to the others with `since`,
    /// senders resend what was not acked (same clientMsgId): reconnect-to-recovered latency, and
    /// nothing lost.
    Storm,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Idle => "idle",
            Scenario::Persist => "persist",
            Scenario::Storm => "storm",
        }
    }
}

/// `baton-bench`'s flags. Progress goes to stderr; stdout gets exactly one JSON line.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Benchmark options")]
pub struct BenchArgs {
    /// Base URL of the server under test (plain http; sockets use WebSocket at /socket.io/).
    /// Repeat for the instances of a cluster: connection i goes to URL i mod n; the REST setup
    /// goes to the first.
    #[arg(long = "url", default_value = "http://127.0.0.1:3000")]
    pub urls: Vec<String>,

    /// What to measure: `fanout` (one big room), `rooms` (many small rooms), `idle` (memory per
    /// idle connection), `persist` (acks per second, each send awaiting its ack), `storm`
    /// (small rooms over several instances while one drains: reconnects and losses).
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,

    /// Socket.IO connections in all, senders included. Default: 200 for fanout and rooms,
    /// 1000 for idle, the number of senders for persist (extra ones receive, spread over the
    /// channels).
    #[arg(long)]
    pub clients: Option<usize>,

    /// Connections that send, each as its own user (so the server's per-user chat rate limit is
    /// not shared). Default: 10 for fanout, 20 for persist; rooms has one per room, idle none.
    #[arg(long)]
    pub senders: Option<usize>,

    /// Messages per second per sender. Default 5. Persist's default is 0: each sender sends its
    /// next message as soon as the previous one is acked (the server's rate limit, 20/s per user
    /// by default, then needs raising: BATON_CHAT_RATE, BATON_CHAT_BURST).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds of sending (idle: seconds the connections are held). Default 10; storm 20.
    #[arg(long)]
    pub duration: Option<f64>,

    /// Connections per room in the rooms scenario: one sender and room-size - 1 receivers.
    #[arg(long, default_value_t = 5)]
    pub room_size: usize,

    /// A server process to measure: CPU seconds (utime + stime in /proc/PID/stat) during the
    /// run and VmRSS (/proc/PID/status) before and after. Repeat for several processes; their
    /// figures are summed. Without it the server figures are null.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Vec<u32>,

    /// Users shared by the receiving connections (several sockets per user). Every user costs
    /// the server an argon2 hash to register and one to log in, so the pool is kept small.
    #[arg(long, default_value_t = 16)]
    pub receiver_users: usize,

    /// Storm: the instance to drain, sent SIGTERM `--drain-after` seconds into the sending. Give
    /// it as one of the `--url`s, but not as a `--server-pid` (it exits during the run).
    #[arg(long = "drain-pid", value_name = "PID")]
    pub drain_pid: Option<u32>,

    /// Storm: seconds after the start of sending at which `--drain-pid` gets SIGTERM.
    #[arg(long, default_value_t = 5.0)]
    pub drain_after: f64,

    /// Connect each connection to its community namespace only. By default it also
    /// connects `/`, on the same connection, as the web client and socket.io-client's
    /// default multiplexing do (PROTOCOL.md v1.1: the connection then gets each message
    /// once), so that the figures are what real clients cost.
    #[arg(long)]
    pub no_root: bool,

    /// Community namespaces each connection connects, on the one connection: the first
    /// is where it joins and sends; the others (communities every user is a member
    /// of) are held idle. What several namespaces on one connection cost.
    #[arg(long, default_value_t = 1)]
    pub communities: usize,
}

impl BenchArgs {
    /// Every default, for `url` and `scenario` (for tests and embedding).
    pub fn new(url: impl Into<String>, scenario: Scenario) -> Self {
        Self {
            urls: vec![url.into()],
            scenario,
            clients: None,
            senders: None,
            rate: None,
            duration: None,
            room_size: 5,
            server_pid: Vec::new(),
            receiver_users: 16,
            drain_pid: None,
            drain_after: 5.0,
            no_root: false,
            communities: 1,
        }
    }
}

/// How many connections connect at once.
const CONNECT_CONCURRENCY: usize = 64;
/// After the sending time: how long to wait for the last acks, then for the last deliveries.
const GRACE: Duration = Duration::from_secs(10);
/// How long every join may take, in all.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One room (a channel): its connections, the first `senders` of which send.
#[derive(Debug, Clone)]
pub(crate) struct Room {
    pub members: usize,
    pub senders: usize,
}

/// The shape of a run, worked out from the flags.
#[derive(Debug)]
struct Plan {
    rooms: Vec<Room>,
    clients: usize,
    senders: usize,
    rate: f64,
    closed_loop: bool,
    duration: Duration,
    receiver_users: usize,
    /// Storm: the instance to send SIGTERM, and when (after the start of sending). Connections
    /// reconnect when their transport closes only in a storm.
    drain: Option<(u32, Duration)>,
}

/// `clients` in full rooms of `size`, one sender each; the remainder, if any, makes one smaller
/// room (a lone client joins the last full room rather than sending to nobody).
fn small_rooms(clients: usize, size: usize) -> anyhow::Result<Vec<Room>> {
    anyhow::ensure!(size >= 2, "--room-size must be >= 2");
    anyhow::ensure!(clients >= size, "--clients must be >= --room-size");
    let mut rooms = vec![Room { members: size, senders: 1 }; clients / size];
    match clients % size {
        0 => {}
        1 => rooms.last_mut().expect("clients >= size").members += 1,
        rest => rooms.push(Room { members: rest, senders: 1 }),
    }
    Ok(rooms)
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Plan> {
        let storm = args.scenario == Scenario::Storm;
        let duration = args.duration.unwrap_or(if storm { 20.0 } else { 10.0 });
        anyhow::ensure!(duration > 0.0 && duration.is_finite(), "--duration must be a positive number");
        anyhow::ensure!(!args.urls.is_empty(), "--url is needed");
        let drain = match (storm, args.drain_pid) {
            (true, Some(pid)) => {
                anyhow::ensure!(
                    args.urls.len() >= 2,
                    "storm needs two --url or more: the drained instance's and another"
                );
                anyhow::ensure!(
                    args.drain_after >= 0.0 && args.drain_after < duration,
                    "--drain-after must be within --duration"
                );
                anyhow::ensure!(!args.server_pid.contains(&pid), "--drain-pid must not also be a --server-pid");
                Some((pid, Duration::from_secs_f64(args.drain_after)))
            }
            (true, None) => bail!("storm needs --drain-pid: the instance to drain"),
            (false, Some(_)) => bail!("--drain-pid is for the storm scenario only"),
            (false, None) => None,
        };
        let default_rate = if args.scenario == Scenario::Persist { 0.0 } else { 5.0 };
        let rate = args.rate.unwrap_or(default_rate);
        anyhow::ensure!(rate >= 0.0 && rate.is_finite(), "--rate must be a number >= 0");
        let rooms = match args.scenario {
            Scenario::Fanout => {
                let clients = args.clients.unwrap_or(200);
                let senders = args.senders.unwrap_or(10);
                anyhow::ensure!(clients >= 2, "fanout needs --clients >= 2");
                anyhow::ensure!((1..=clients).contains(&senders), "fanout needs 1 <= --senders <= --clients");
                anyhow::ensure!(rate > 0.0, "fanout needs --rate > 0");
                vec![Room { members: clients, senders }]
            }
            Scenario::Rooms | Scenario::Storm => {
                anyhow::ensure!(rate > 0.0, "{} needs --rate > 0", args.scenario.as_str());
                if args.senders.is_some() {
                    eprintln!("bench: {} has one sender per room; --senders is ignored", args.scenario.as_str());
                }
                small_rooms(args.clients.unwrap_or(200), args.room_size)?
            }
            Scenario::Idle => {
                let clients = args.clients.unwrap_or(1000);
                anyhow::ensure!(clients >= 1, "idle needs --clients >= 1");
                if args.senders.is_some() || args.rate.is_some() {
                    eprintln!("bench: idle sends nothing; --senders and --rate are ignored");
                }
                vec![Room { members: clients, senders: 0 }]
            }
            Scenario::Persist => {
                let senders = args.senders.unwrap_or(20);
                let clients = args.clients.unwrap_or(senders);
                anyhow::ensure!(senders >= 1, "persist needs --senders >= 1");
                anyhow::ensure!(clients >= senders, "persist needs --clients >= --senders");
                let mut rooms = vec![Room { members: 1, senders: 1 }; senders];
                for i in 0..clients - senders {
                    rooms[i % senders].members += 1;
                }
                rooms
            }
        };
        let clients = rooms.iter().map(|r| r.members).sum();
        let senders = rooms.iter().map(|r| r.senders).sum();
        Ok(Plan {
            rooms,
            clients,
            senders,
            rate: if args.scenario == Scenario::Idle { 0.0 } else { rate },
            closed_loop: args.scenario == Scenario::Persist,
            duration: Duration::from_secs_f64(duration),
            receiver_users: args.receiver_users.max(1),
            drain,
        })
    }

    /// Messages each sender sends: `None` for a closed loop without a rate (until the time is up).
    fn per_sender(&self) -> Option<u64> {
        (self.rate > 0.0).then(|| ((self.rate * self.duration.as_secs_f64()).round() as u64).max(1))
    }
}

/// Runs one benchmark against the server at `args.url` and returns its report
/// (`baton-bench` prints it as one JSON line). Progress goes to stderr.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let plan = Plan::new(args)?;
    let scenario = args.scenario.as_str();
    eprintln!(
        "bench: {scenario}: {} clients in {} room(s), {} sender(s), rate {}/s{}, {:?}, against {}",
        plan.clients,
        plan.rooms.len(),
        plan.senders,
        plan.rate,
        if plan.closed_loop { " (each send awaits its ack)" } else { "" },
        plan.duration,
        args.urls.join(" ")
    );

    let prepared = setup::prepare(&args.urls[0], &plan.rooms, plan.receiver_users, args.communities)
        .await
        .context("setting up over REST")?;
    let targets = args
        .urls
        .iter()
        .map(|url| {
            conn::Target::new(url, prepared.community, &prepared.extra_communities)
                .with_context(|| format!("--url {url}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = Instant::now();
    let ctx = Arc::new(Ctx {
        targets,
        reconnect: plan.drain.is_some(),
        root: !args.no_root,
        base,
        counters: Counters::default(),
        connect_gate: tokio::sync::Semaphore::new(CONNECT_CONCURRENCY),
    });

    let before = procfs::snapshot(&args.server_pid);
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);

    // One task per connection; senders get consecutive ids (`gid`), in room order.
    let mut tasks = Vec::with_capacity(plan.clients);
    let mut gid = 0u32;
    let interval = if plan.rate > 0.0 { Duration::from_secs_f64(1.0 / plan.rate) } else { Duration::ZERO };
    for (room_index, room) in plan.rooms.iter().enumerate() {
        for member in 0..room.members {
            let sender = (member < room.senders).then(|| {
                let spec = SenderSpec {
                    gid,
                    count: plan.per_sender(),
                    interval,
                    // Spread the senders over one interval so they do not all send at once.
                    offset: interval.mul_f64(gid as f64 / plan.senders.max(1) as f64),
                    closed_loop: plan.closed_loop,
                };
                gid += 1;
                spec
            });
            let spec = Spec {
                target: tasks.len() % args.urls.len(),
                room: room_index,
                token: prepared.tokens[room_index][member].clone(),
                channel: prepared.channels[room_index],
                receivers: (room.members - 1) as u64,
                senders_total: plan.senders,
                sender,
            };
            tasks.push(tokio::spawn(conn::run(ctx.clone(), spec, phase_rx.clone())));
        }
    }
    drop(phase_rx);

    let c = &ctx.counters;
    let result = drive(&plan, &ctx, &phase_tx, &args.server_pid, before).await;
    let _ = phase_tx.send(Phase::Stop);
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        conns.push(task.await.context("a connection task panicked")?);
    }
    let measured = result?;
    if c.rate_limited.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "bench: WARNING: {} chat acks came back rate_limited: the server's per-user limit was hit \
             (raise BATON_CHAT_RATE / BATON_CHAT_BURST on the server, or lower --rate)",
            c.rate_limited.load(Ordering::Relaxed)
        );
    }
    let report = stats::report(scenario, &plan.rooms, plan.rate, &conns, &measured);
    eprintln!(
        "bench: done: sent {} acked {} delivered {}/{} lost {} duplicated {}{}",
        report.sent,
        report.acked,
        report.delivered,
        report.expected,
        report.lost,
        report.duplicated,
        if plan.drain.is_some() {
            format!(" reconnects {}/{}", report.recovered, report.reconnects)
        } else {
            String::new()
        }
    );
    Ok(report)
}

/// Waits until all `n` connections have counted a step as done or failed (`counts`),
/// printing progress every 2 s; fails if any failed, or if `within` passes first.
async fn all_reported(
    c: &Counters,
    n: usize,
    (done, failed): (&AtomicUsize, &AtomicUsize),
    step: &str,
    within: Option<Duration>,
) -> anyhow::Result<()> {
    let deadline = within.map(|d| Instant::now() + d);
    let mut last_print = Instant::now();
    loop {
        let (ok, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        if ok + failed >= n {
            if failed > 0 {
                bail!("{failed} of {n} {step} failed; first: {}", c.first_error());
            }
            return Ok(());
        }
        if let (Some(deadline), Some(within)) = (deadline, within)
            && Instant::now() > deadline
        {
            bail!("only {ok} of {n} {step} answered within {within:?}");
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("bench: {step} {ok}/{n}");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connect, join, send, wait: everything between spawning the tasks and stopping them.
async fn drive(
    plan: &Plan,
    ctx: &Ctx,
    phase: &watch::Sender<Phase>,
    pids: &[u32],
    before: Option<procfs::Snapshot>,
) -> anyhow::Result<stats::Measured> {
    let c = &ctx.counters;
    let n = plan.clients;
    all_reported(c, n, (&c.connected, &c.connect_failed), "connections", None).await?;
    eprintln!("bench: connected {n}/{n} in {:.1}s; joining", ctx.base.elapsed().as_secs_f64());

    let _ = phase.send(Phase::Join);
    all_reported(c, n, (&c.joined, &c.join_failed), "joins", Some(JOIN_TIMEOUT)).await?;

    let start = Instant::now() + Duration::from_millis(50);
    let end = start + plan.duration;
    let cpu_start = procfs::snapshot(pids);
    let own_start = procfs::snapshot(&[std::process::id()]);
    eprintln!("bench: all joined; running for {:?}", plan.duration);
    let _ = phase.send(Phase::Go { start, end });
    if let Some((pid, after)) = plan.drain {
        tokio::spawn(async move {
            tokio::time::sleep_until(start + after).await;
            eprintln!("bench: draining: SIGTERM to {pid}");
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
                eprintln!("bench: kill {pid}: {}", std::io::Error::last_os_error());
            }
        });
    }
    tokio::time::sleep_until(end).await;

    let senders = plan.senders;
    let deadline = Instant::now() + GRACE;
    while c.senders_done.load(Ordering::Relaxed) < senders && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let send_phase = start.elapsed();
    if c.senders_done.load(Ordering::Relaxed) < senders {
        eprintln!("bench: some acks did not come back within {GRACE:?}");
    }
    let deadline = Instant::now() + GRACE;
    let settled = || {
        c.delivered.load(Ordering::Relaxed) >= c.expected.load(Ordering::Relaxed)
            && c.reconnecting.load(Ordering::Relaxed) == 0
    };
    while !settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duration = start.elapsed();
    let after = procfs::snapshot(pids);
    let own_after = procfs::snapshot(&[std::process::id()]);
    if senders > 0 {
        // Give duplicates a moment to show themselves before the sockets stop reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(stats::Measured {
        send_phase,
        duration,
        rss_before: before.map(|s| s.rss_kib),
        rss_after: after.map(|s| s.rss_kib),
        cpu_ticks: ticks_between(cpu_start, after, |s| s.cpu_ticks),
        kernel_ticks: ticks_between(cpu_start, after, |s| s.kernel_ticks),
        bench_cpu_ticks: ticks_between(own_start, own_after, |s| s.cpu_ticks),
    })
}

fn ticks_between(
    a: Option<procfs::Snapshot>,
    b: Option<procfs::Snapshot>,
    ticks: fn(&procfs::Snapshot) -> u64,
) -> Option<u64> {
    Some(ticks(&b?).saturating_sub(ticks(&a?)))
}
