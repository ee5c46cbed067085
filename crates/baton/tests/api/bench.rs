//! `baton-bench`'s load generator, run in-process against a real baton: correctness of its
//! bookkeeping only (every message acked, delivered once to every other client), never timing.

use baton_bench::{BenchArgs, Scenario, run};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fanout_counts_every_message_delivered_exactly_once() {
    let app = spawn_app().await;
    let mut args = BenchArgs::new(app.base.clone(), Scenario::Fanout);
    args.clients = Some(20);
    args.senders = Some(2);
    args.duration = Some(2.0);
    args.receiver_users = 4;

    let report = run(&args).await.expect("the bench runs");

    assert_eq!((report.clients, report.senders, report.rooms), (20, 2, 1), "{report:?}");
    assert_eq!(report.sent, 20, "2 senders x 5/s x 2 s: {report:?}");
    assert_eq!(report.acked, report.sent, "{report:?}");
    assert_eq!((report.rate_limited, report.ack_errors, report.unanswered), (0, 0, 0), "{report:?}");
    assert_eq!(report.expected, report.acked * 19, "every other client gets every message: {report:?}");
    assert_eq!(report.delivered, report.expected, "{report:?}");
    assert_eq!((report.lost, report.duplicated, report.closed_early), (0, 0, 0), "{report:?}");
    app.stop().await;
}
