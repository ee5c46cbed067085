//! The report of a run: counts from every connection, latency percentiles, server figures.

use std::time::Duration;

use serde::Serialize;

use super::Room;
use super::conn::ConnStats;
use super::procfs::clk_tck;

/// What the coordinator measured around the run.
pub(super) struct Measured {
    /// From the start of sending until every sender had its last ack (or gave up waiting).
    pub send_phase: Duration,
    /// From the start of sending until the last expected delivery (or gave up waiting).
    pub duration: Duration,
    /// Server RSS (KiB, summed over `--server-pid`s) before any socket connected, and at the end.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    /// Server CPU clock ticks (utime + stime) from the start of sending to the end.
    pub cpu_ticks: Option<u64>,
    /// The part of `cpu_ticks` spent in the kernel (stime).
    pub kernel_ticks: Option<u64>,
    /// The bench's own CPU clock ticks over the same time.
    pub bench_cpu_ticks: Option<u64>,
}

/// One run's figures, printed by `baton-bench` as one JSON line (field order kept).
/// Latencies are in milliseconds; `null` where there is nothing to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// Socket.IO connections, senders included.
    pub clients: usize,
    pub senders: usize,
    /// Rooms (channels) the clients were spread over.
    pub rooms: usize,
    /// Messages per second per sender (0: closed loop as fast as acks come).
    pub rate: f64,
    /// Chat events sent.
    pub sent: u64,
    /// Acks with `written: true`.
    pub acked: u64,
    /// Acks refused with `rate_limited`.
    pub rate_limited: u64,
    /// Acks refused with any other error.
    pub ack_errors: u64,
    /// Chat events never answered.
    pub unanswered: u64,
    /// Distinct (message, receiving connection) pairs that arrived as `new-chat`.
    pub delivered: u64,
    /// Written messages times the other connections in their room.
    pub expected: u64,
    /// Written messages that never reached a connection of their room.
    pub lost: u64,
    /// Arrivals beyond the first of a message at a connection.
    pub duplicated: u64,
    /// Send to `new-chat` at a receiver, on the bench's clock (first arrivals only).
    pub delivery_p50_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
    pub delivery_max_ms: Option<f64>,
    /// Send to ack.
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub ack_max_ms: Option<f64>,
    /// From the start of sending until the last expected delivery (idle: the hold).
    pub duration_s: f64,
    /// Acked messages per second of the sending phase.
    pub acks_per_s: f64,
    /// Connections that closed before the end (and, in a storm, found no instance to go on with).
    pub closed_early: usize,
    /// Storm: transports that closed under a connection, and the reconnects that got `recovered`
    /// on another instance; from the close to `recovered`.
    pub reconnects: u64,
    pub recovered: u64,
    pub reconnect_p50_ms: Option<f64>,
    pub reconnect_p99_ms: Option<f64>,
    pub reconnect_max_ms: Option<f64>,
    /// Server CPU seconds (utime + stime, summed over `--server-pid`) during the run.
    pub server_cpu_s: Option<f64>,
    /// The part of `server_cpu_s` spent in the kernel (stime): system calls, and on loopback the
    /// TCP path into the receiving process too.
    pub server_kernel_cpu_s: Option<f64>,
    /// The bench process's own CPU seconds over the same time: if it nears the cores it may
    /// use, the bench, not the server, is the limit.
    pub bench_cpu_s: Option<f64>,
    /// Server VmRSS in KiB before the sockets connected and at the end, with them connected.
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    pub cpu_ms_per_1000_delivered: Option<f64>,
    /// Persist only: server CPU per 1000 written acks.
    pub cpu_ms_per_1000_acked: Option<f64>,
    /// (RSS after - RSS before) / clients, idle only.
    pub kib_per_idle_connection: Option<f64>,
}

pub(super) fn report(scenario: &'static str, rooms: &[Room], rate: f64, conns: &[ConnStats], m: &Measured) -> Report {
    let mut senders: Vec<&ConnStats> = conns.iter().filter(|c| c.gid.is_some()).collect();
    senders.sort_by_key(|c| c.gid);
    let sum = |f: fn(&ConnStats) -> u64| conns.iter().map(f).sum::<u64>();
    let (sent, acked) = (sum(|c| c.sent), sum(|c| c.acked));
    let (rate_limited, ack_errors) = (sum(|c| c.rate_limited), sum(|c| c.ack_errors));
    let answered = conns.iter().map(|c| c.ack_latency_us.len() as u64).sum::<u64>();

    let expected = senders
        .iter()
        .map(|s| s.written.iter().filter(|w| **w).count() as u64 * (rooms[s.room].members as u64 - 1))
        .sum();
    let (mut delivered, mut duplicated, mut lost) = (0u64, 0u64, 0u64);
    for c in conns {
        for counts in &c.received {
            delivered += counts.iter().filter(|n| **n > 0).count() as u64;
            duplicated += counts.iter().map(|n| u64::from(n.saturating_sub(1))).sum::<u64>();
        }
        for s in senders.iter().filter(|s| s.room == c.room && !std::ptr::eq(**s, c)) {
            let counts = s.gid.and_then(|g| c.received.get(g as usize)).map_or(&[][..], Vec::as_slice);
            lost +=
                s.written.iter().enumerate().filter(|(n, w)| **w && counts.get(*n).copied().unwrap_or(0) == 0).count()
                    as u64;
        }
    }

    let delivery = percentiles(conns.iter().flat_map(|c| c.delivery_latency_us.iter().copied()).collect());
    let ack = percentiles(conns.iter().flat_map(|c| c.ack_latency_us.iter().copied()).collect());
    let reconnect = percentiles(conns.iter().flat_map(|c| c.reconnect_latency_us.iter().copied()).collect());
    let clients = conns.len();
    let cpu_s = m.cpu_ticks.map(|t| t as f64 / clk_tck());
    let per_1000 = |n: u64| cpu_s.filter(|_| n > 0).map(|s| round(s * 1000.0 / (n as f64 / 1000.0)));
    let kib_per_idle_connection = match (scenario, m.rss_before, m.rss_after) {
        ("idle", Some(before), Some(after)) if clients > 0 => {
            Some(round((after as f64 - before as f64) / clients as f64))
        }
        _ => None,
    };
    let send_s = m.send_phase.as_secs_f64();
    Report {
        scenario,
        clients,
        senders: senders.len(),
        rooms: rooms.len(),
        rate,
        sent,
        acked,
        rate_limited,
        ack_errors,
        unanswered: sent.saturating_sub(answered),
        delivered,
        expected,
        lost,
        duplicated,
        delivery_p50_ms: delivery.map(|p| p.0),
        delivery_p99_ms: delivery.map(|p| p.1),
        delivery_max_ms: delivery.map(|p| p.2),
        ack_p50_ms: ack.map(|p| p.0),
        ack_p99_ms: ack.map(|p| p.1),
        ack_max_ms: ack.map(|p| p.2),
        duration_s: round(m.duration.as_secs_f64()),
        acks_per_s: if send_s > 0.0 { round(acked as f64 / send_s) } else { 0.0 },
        closed_early: conns.iter().filter(|c| c.closed_early).count(),
        reconnects: sum(|c| c.reconnects),
        recovered: conns.iter().map(|c| c.reconnect_latency_us.len() as u64).sum(),
        reconnect_p50_ms: reconnect.map(|p| p.0),
        reconnect_p99_ms: reconnect.map(|p| p.1),
        reconnect_max_ms: reconnect.map(|p| p.2),
        server_cpu_s: cpu_s.map(round),
        server_kernel_cpu_s: m.kernel_ticks.map(|t| round(t as f64 / clk_tck())),
        bench_cpu_s: m.bench_cpu_ticks.map(|t| round(t as f64 / clk_tck())),
        server_rss_kib_before: m.rss_before,
        server_rss_kib_after: m.rss_after,
        cpu_ms_per_1000_delivered: per_1000(delivered),
        cpu_ms_per_1000_acked: if scenario == "persist" { per_1000(acked) } else { None },
        kib_per_idle_connection,
    }
}

/// p50, p99 and max in milliseconds (nearest rank), of latencies in microseconds.
fn percentiles(mut us: Vec<u32>) -> Option<(f64, f64, f64)> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    let ms = |v: u32| round(f64::from(v) / 1000.0);
    Some((ms(rank(0.50)), ms(rank(0.99)), ms(us[us.len() - 1])))
}

/// Three decimals are plenty.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentiles(vec![]), None);
        assert_eq!(percentiles(vec![5000]), Some((5.0, 5.0, 5.0)));
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentiles(us), Some((50.0, 99.0, 100.0)));
    }
}
