//! Shedding: closing a share of this instance's transports while it keeps serving,
//! so that a load balancer's new weights apply to live sessions too (a canary step
//! moves a fraction of the old colour's clients, not only new ones).
//!
//! A shed is the drain's closing without the drain's leaving: the same
//! [`drain::close_paced`], so the same guarantees per transport (acks in flight
//! answered first, no DISCONNECT packet, presence kept for the grace period), but
//! `/readyz` stays 200 and new sessions are accepted throughout. Which transports
//! go: a uniformly random sample of those connected when the shed starts (engine.io
//! connections, each once however many namespaces it carries), so every share is
//! representative of the instance's clients (transports, users, age); oldest-first
//! would move the same long-lived clients at every step and leave a canary without
//! fresh sessions' behaviour.
//!
//! The invariants: at most one shed runs at a time; none starts while the instance
//! drains, and a drain that starts stops a running shed (the drain closes the rest);
//! a shed never closes more transports than it chose at its start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::App;
use crate::drain;
use crate::error::{Code, Error, Result};

/// The longest shed window accepted: an hour (a typo in milliseconds should not
/// leave a shed running for days).
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// How many of the transports to close.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    /// This fraction of them, 0 < f <= 1, rounded to the nearest whole transport.
    Fraction(f64),
    /// This many, at least 1 (all of them, if there are fewer).
    Count(u64),
}

impl Share {
    /// The share asked for, if any: at most one of `fraction` and `count`, each in
    /// its range. Neither is `None`: the full drain.
    pub fn parse(fraction: Option<f64>, count: Option<u64>) -> Result<Option<Share>> {
        match (fraction, count) {
            (Some(_), Some(_)) => Err(Error::invalid("give fraction or count, not both")),
            (Some(f), None) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(Some(Share::Fraction(f))),
            (Some(f), None) => Err(Error::invalid(format!("fraction must be above 0 and at most 1 (got {f})"))),
            (None, Some(0)) => Err(Error::invalid("count must be at least 1")),
            (None, Some(n)) => Ok(Some(Share::Count(n))),
            (None, None) => Ok(None),
        }
    }

    /// How many of `n` transports this share is.
    pub fn of(self, n: usize) -> usize {
        match self {
            Share::Fraction(f) => ((f * n as f64).round() as usize).min(n),
            Share::Count(c) => usize::try_from(c).unwrap_or(usize::MAX).min(n),
        }
    }
}

/// What a shed did: logged as one JSON line when it ends, on `/admin/status`, and
/// the answer to `POST /admin/drain?wait=true` with a share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShedReport {
    pub instance: String,
    /// The share asked for: one of these two is set.
    pub fraction: Option<f64>,
    pub count: Option<u64>,
    /// Engine.io connections (clients) here when the shed began, those a shed or a
    /// drain was closing already left out.
    pub transports_at_start: usize,
    /// Of those, the ones the shed chose to close.
    pub chosen: usize,
    /// Of the chosen, the ones whose transport the shed closed, in all and by
    /// transport.
    pub closed: usize,
    pub closed_websocket: usize,
    pub closed_polling: usize,
    /// Chosen clients that left by themselves before their turn.
    pub gone_before: usize,
    /// Acks in flight on the closed transports when their turn came, answered
    /// before each close.
    pub acks_waited_for: usize,
    /// A drain started during the shed and took over the rest.
    pub stopped_by_drain: bool,
    pub window_ms: u128,
    pub duration_ms: u128,
}

/// What the instance answers when a shed starts (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub instance: String,
    pub shedding: bool,
    pub transports: usize,
    pub chosen: usize,
    pub window_ms: u128,
}

/// This instance's sheds: whether one runs, and the last one's report.
#[derive(Debug)]
pub struct Shed {
    running: AtomicBool,
    report: watch::Sender<Option<ShedReport>>,
}

impl Default for Shed {
    fn default() -> Self {
        Self { running: AtomicBool::new(false), report: watch::Sender::new(None) }
    }
}

impl Shed {
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The last shed's report, once it is over.
    pub fn report(&self) -> Option<ShedReport> {
        self.report.borrow().clone()
    }
}

/// Clears the running flag however the shed's task ends.
struct Running<'a>(&'a Shed);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// Starts a shed of `share` of this instance's transports over `window`. Refused
/// (`conflict`) while the instance drains or another shed runs. Returns what it
/// chose and the task that ends with its report.
pub fn start(app: &Arc<App>, share: Share, window: Duration) -> Result<(Started, tokio::task::JoinHandle<ShedReport>)> {
    if app.drain.is_draining() {
        return Err(Error::new(Code::Conflict, "this instance is draining: every transport is being closed already"));
    }
    if app.shed.running.swap(true, Ordering::SeqCst) {
        return Err(Error::new(
            Code::Conflict,
            "a shed is running on this instance; its report will be on /admin/status",
        ));
    }
    let started = Instant::now();
    let mut clients: Vec<drain::Client> = drain::connected_clients(app)
        .into_iter()
        .filter(|c| !app.drain.is_closing(&c.socket.id().to_string()))
        .collect();
    let transports = clients.len();
    let chosen = share.of(transports);
    clients.shuffle(&mut rand::rng());
    clients.truncate(chosen);
    let answer =
        Started { instance: app.instance.clone(), shedding: true, transports, chosen, window_ms: window.as_millis() };
    tracing::info!(transports, chosen, ?window, "shedding: closing a share of the transports over the window");
    let app = app.clone();
    let task = tokio::spawn(async move {
        let _running = Running(&app.shed);
        let closed = drain::close_paced(&app, &clients, started, window, || app.drain.is_draining()).await;
        let (fraction, count) = match share {
            Share::Fraction(f) => (Some(f), None),
            Share::Count(c) => (None, Some(c)),
        };
        let report = ShedReport {
            instance: app.instance.clone(),
            fraction,
            count,
            transports_at_start: transports,
            chosen,
            closed: closed.total(),
            closed_websocket: closed.websocket,
            closed_polling: closed.polling,
            gone_before: closed.gone_before,
            acks_waited_for: closed.acks_waited_for,
            stopped_by_drain: app.drain.is_draining(),
            window_ms: window.as_millis(),
            duration_ms: started.elapsed().as_millis(),
        };
        let line = serde_json::to_string(&report).unwrap_or_default();
        tracing::info!(report = %line, "shed finished");
        app.shed.report.send_replace(Some(report.clone()));
        report
    });
    Ok((answer, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_one_of_fraction_and_count_within_its_range() {
        assert_eq!(Share::parse(None, None).unwrap(), None);
        assert_eq!(Share::parse(Some(0.25), None).unwrap(), Some(Share::Fraction(0.25)));
        assert_eq!(Share::parse(Some(1.0), None).unwrap(), Some(Share::Fraction(1.0)));
        assert_eq!(Share::parse(None, Some(3)).unwrap(), Some(Share::Count(3)));
        for (f, c) in
            [(Some(0.0), None), (Some(-0.5), None), (Some(1.01), None), (Some(f64::NAN), None), (None, Some(0))]
        {
            assert_eq!(Share::parse(f, c).unwrap_err().code, Code::Invalid, "{f:?} {c:?}");
        }
        assert_eq!(Share::parse(Some(0.5), Some(2)).unwrap_err().code, Code::Invalid);
    }

    #[test]
    fn a_share_of_n_rounds_to_the_nearest_and_never_exceeds_n() {
        assert_eq!(Share::Fraction(0.25).of(8), 2);
        assert_eq!(Share::Fraction(0.25).of(10), 3);
        assert_eq!(Share::Fraction(0.05).of(10), 1);
        assert_eq!(Share::Fraction(0.01).of(10), 0);
        assert_eq!(Share::Fraction(1.0).of(7), 7);
        assert_eq!(Share::Count(5).of(3), 3);
        assert_eq!(Share::Count(2).of(3), 2);
        assert_eq!(Share::Fraction(0.5).of(0), 0);
    }
}
