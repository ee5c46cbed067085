//! Prometheus metrics, rendered at `GET /metrics`. The `metrics` crate's macros
//! record from anywhere; this module installs the exporter once per process and
//! names what is measured, so that every metric is listed in one place.
//!
//! Histograms have buckets (not summaries) so that they aggregate across instances.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Socket.IO sockets connected to this instance, by namespace (gauge).
pub const SOCKETS: &str = "baton_sockets";
/// Engine.IO connections (clients, whatever their namespaces) on this instance,
/// sampled at each scrape: what an autoscaler should count (one series per
/// instance, unlike [`SOCKETS`]).
pub const TRANSPORTS: &str = "baton_transports";
/// Of them, those on HTTP long-polling (not upgraded to WebSocket).
pub const TRANSPORTS_POLLING: &str = "baton_transports_polling";
/// Namespace connects, by `namespace` kind (`root`, `community`) and `result`
/// (`accepted` or the refusal's code).
pub const CONNECTS: &str = "baton_connects_total";
/// Client events received, by `event`.
pub const EVENTS_IN: &str = "baton_events_in_total";
/// Events emitted (one per broadcast, not per recipient), by `event`.
pub const EVENTS_OUT: &str = "baton_events_out_total";
/// Time from an event's arrival to its ack, by `event` (seconds).
pub const ACK_SECONDS: &str = "baton_ack_seconds";
/// Broadcasts that failed, by `kind` (`adapter`: Redis; `socket`: a full or closed socket buffer).
pub const BROADCAST_ERRORS: &str = "baton_broadcast_errors_total";
/// Broadcasts delivered to this instance's sockets only because the cluster adapter failed.
pub const LOCAL_FALLBACKS: &str = "baton_broadcast_local_fallbacks_total";
/// Failures on the server's side (answers with code `unavailable`: database or
/// cluster state unreachable), the error rate a canary deploy watches.
pub const SERVER_ERRORS: &str = "baton_server_errors_total";
/// Database query time, by `query` (seconds).
pub const DB_SECONDS: &str = "baton_db_query_seconds";
/// New messages written per transaction by the group commit (rows).
pub const DB_BATCH_ROWS: &str = "baton_db_batch_rows";
/// Batches of new messages that a row made fail before their commit, so that each of
/// their messages was then written alone.
pub const DB_BATCH_RETRIES: &str = "baton_db_batch_retries_total";
/// 1 while the database answers the background check, 0 while it does not.
pub const DB_UP: &str = "baton_db_up";
/// 1 while Redis answers, 0 while it does not (only in a cluster).
pub const REDIS_UP: &str = "baton_redis_up";
/// Times the Redis connections came back after a failure.
pub const REDIS_RECONNECTS: &str = "baton_redis_reconnects_total";
/// Redis operations of baton's own state (joins, presence, registry) that failed.
pub const REDIS_ERRORS: &str = "baton_redis_errors_total";
/// 1 while the delivery probe's round trips through Redis pub/sub succeed, 0 after
/// they have failed for `--delivery-timeout` (only in a cluster).
pub const DELIVERY_OK: &str = "baton_delivery_ok";
/// Times the delivery probe found cross-instance delivery failing.
pub const DELIVERY_FAILURES: &str = "baton_delivery_failures_total";
/// Repairs the delivery probe made while delivery failed, by `action`
/// (`resubscribe`, `reconnect`).
pub const DELIVERY_REPAIRS: &str = "baton_delivery_repairs_total";
/// Live instances that answered this instance's last probes, on every shard.
pub const DELIVERY_PEERS_ANSWERING: &str = "baton_delivery_peers_answering";
/// Live instances in the registry, this one left out.
pub const DELIVERY_PEERS: &str = "baton_delivery_peers";
/// Pub/sub messages dropped before reaching the adapter (a full queue).
pub const PUBSUB_DROPPED: &str = "baton_pubsub_dropped_total";
/// `typing` events acked but not relayed: over the per-user, per-channel rate.
pub const TYPING_DROPPED: &str = "baton_typing_dropped_total";
/// Connects refused because the user had `--max-sockets-per-user` sockets here.
pub const SOCKETS_CAPPED: &str = "baton_sockets_capped_total";

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Up to the group commit's largest batch (`store/group_commit.rs`, 256).
const BATCH_ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls reuse it) and returns the
/// handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the buckets are not empty")
                .set_buckets_for_metric(Matcher::Full(DB_BATCH_ROWS.into()), BATCH_ROWS_BUCKETS)
                .expect("the buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            // The exporter needs its upkeep run to drain histogram buffers.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}
