//! Operations endpoints: liveness and readiness for load balancers, and metrics.
//! [`Readiness`] is the one judgement of whether this instance should get traffic:
//! `/readyz` and the load balancer's agent port (`lb_agent.rs`) both answer from
//! it, so they cannot disagree.

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::app::App;
use crate::error::{Code, Error};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

/// Whether this instance should get traffic, from the state the background checks
/// keep (the store's and the Redis link's) and the drain's flag: read at once,
/// never by waiting on an outage. A shed does not enter into it: a shedding
/// instance stays ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// Serving: new sessions welcome.
    Ready,
    /// Draining: no new sessions; those it has are being moved away.
    Draining,
    /// The database or, in a cluster, Redis is unreachable (why, in words). Comes
    /// before draining: an instance that cannot serve is down, draining or not.
    Unreachable(&'static str),
}

impl Readiness {
    /// This instance's readiness now.
    pub(super) fn of(app: &App) -> Self {
        let redis_up = app.redis.as_ref().is_none_or(|r| r.health.is_up());
        let delivering = app.redis.as_ref().is_none_or(|r| r.health.is_delivering());
        Self::from_state(app.drain.is_draining(), app.chat.store().is_up(), redis_up, delivering)
    }

    /// The precedence: unreachable (the database first, then Redis, then delivery
    /// through it), then draining, then ready.
    fn from_state(draining: bool, database_up: bool, redis_up: bool, delivering: bool) -> Self {
        if !database_up {
            Readiness::Unreachable("the database is unreachable")
        } else if !redis_up {
            Readiness::Unreachable("redis is unreachable")
        } else if !delivering {
            Readiness::Unreachable("cross-instance delivery is failing (the delivery probe)")
        } else if draining {
            Readiness::Draining
        } else {
            Readiness::Ready
        }
    }

    /// The line an HAProxy agent check reads (HAProxy 2.6, `agent-check`): the
    /// operational state `up` (a dead or hung process is the health check's to
    /// find) and an administrative one: `ready`, or `drain` (only sessions that
    /// persistence sends here). An unreachable database or Redis is a `drain`, not a
    /// `down`: the instance keeps its clients (their sends get `unavailable` and are
    /// retried) and gets no new ones; when the outage is every instance's (they
    /// share them), `down` would throw every client off at once. Never a weight
    /// percentage: the deploy scripts set weights through HAProxy's runtime API, and
    /// an agent's would overwrite them at every check.
    pub(super) fn agent_line(self) -> &'static str {
        match self {
            Readiness::Ready => "up ready\n",
            Readiness::Draining | Readiness::Unreachable(_) => "up drain\n",
        }
    }
}

/// The process is alive and answering.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// 200 only while this instance should get traffic ([`Readiness`]): 503
/// `unavailable` while the database or Redis is unreachable, else 503 `draining`
/// while it drains. A load balancer's probe gets a 503 at once, not a timeout.
async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse, Error> {
    match Readiness::of(&app) {
        Readiness::Ready => Ok(axum::Json(serde_json::json!({ "status": "ready" }))),
        Readiness::Draining => Err(Error::new(Code::Draining, "draining")),
        Readiness::Unreachable(reason) => Err(Error::new(Code::Unavailable, reason)),
    }
}

/// Prometheus text exposition of every metric in [`crate::metrics`]. The transport
/// gauges are sampled here, at each scrape (what `/admin/status` counts), rather
/// than kept up to date on every connect and close.
async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let (transports, polling) = crate::drain::count_transports(&app);
    metrics::gauge!(crate::metrics::TRANSPORTS).set(transports as f64);
    metrics::gauge!(crate::metrics::TRANSPORTS_POLLING).set(polling as f64);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::install().render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_comes_before_draining_and_draining_before_ready() {
        assert_eq!(Readiness::from_state(false, true, true, true), Readiness::Ready);
        assert_eq!(Readiness::from_state(true, true, true, true), Readiness::Draining);
        for draining in [false, true] {
            assert_eq!(
                Readiness::from_state(draining, false, false, false),
                Readiness::Unreachable("the database is unreachable")
            );
            assert_eq!(
                Readiness::from_state(draining, true, false, false),
                Readiness::Unreachable("redis is unreachable")
            );
            assert!(
                matches!(Readiness::from_state(draining, true, true, false), Readiness::Unreachable(why) if why.contains("delivery"))
            );
        }
    }

    #[test]
    fn the_agent_line_is_words_haproxy_knows_and_never_a_weight() {
        assert_eq!(Readiness::Ready.agent_line(), "up ready\n");
        assert_eq!(Readiness::Draining.agent_line(), "up drain\n");
        assert_eq!(Readiness::Unreachable("redis is unreachable").agent_line(), "up drain\n");
        for readiness in [Readiness::Ready, Readiness::Draining, Readiness::Unreachable("the database is unreachable")]
        {
            let line = readiness.agent_line();
            // One line, ended as HAProxy needs it, nothing after the end.
            assert_eq!(line.find(['\r', '\n']), Some(line.len() - 1), "{line:?}");
            assert!(!line.contains('%'), "a weight in {line:?}");
            for word in line.split([' ', '\t', ',', '\n']).filter(|w| !w.is_empty()) {
                assert!(["up", "ready", "drain"].contains(&word), "{word:?} in {line:?}");
            }
        }
    }
}
