//! The operator's commands, over an instance's admin endpoints (`http/admin.rs`),
//! so that scripts read a result instead of parsing logs: `baton drain` (start a
//! drain, or with `--fraction`/`--count` a shed; with `--wait`, its report when it
//! ends) and `baton status`. With `--json` each prints exactly one JSON line on
//! stdout; without it, a line for people.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::drain::Report;
use crate::shed::ShedReport;

/// An instance's admin API.
pub struct Admin {
    url: String,
    token: String,
    http: reqwest::Client,
}

/// `GET /admin/status`.
#[derive(Debug, Deserialize, serde::Serialize)]
pub struct Status {
    pub instance: String,
    pub draining: bool,
    #[serde(default)]
    pub shedding: bool,
    pub sockets: usize,
    #[serde(default)]
    pub transports: usize,
    /// Of the transports, those on HTTP long-polling (not upgraded to WebSocket).
    #[serde(default)]
    pub polling: usize,
    pub drain: Option<Report>,
    #[serde(default)]
    pub shed: Option<ShedReport>,
}

impl Admin {
    /// `url`: the instance's base URL; `token`: its admin token.
    pub fn new(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token
            .filter(|t| !t.is_empty())
            .context("the instance's admin token is needed: --admin-token or BATON_ADMIN_TOKEN")?;
        // No overall timeout: a drain may take its whole window. Connecting must not.
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
        Ok(Self { url: url.trim_end_matches('/').to_owned(), token: token.to_owned(), http })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
        let res = request.bearer_auth(&self.token).send().await.with_context(|| format!("{what}: {}", self.url))?;
        if !res.status().is_success() {
            let status = res.status();
            anyhow::bail!("{what}: {} answered {status} {}", self.url, res.text().await.unwrap_or_default());
        }
        Ok(res)
    }

    /// Starts a drain (`POST /admin/drain`); with `wait`, returns its report once it
    /// is over (the instance answers, then exits).
    pub async fn drain(&self, wait: bool) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/admin/drain{}", self.url, if wait { "?wait=true" } else { "" });
        let res = self.send(self.http.post(url), "drain").await?;
        res.json().await.context("the instance closed the connection before answering with its drain report")
    }

    /// Starts a shed (`POST /admin/drain` with a share); with `wait`, returns its
    /// report once it is over.
    pub async fn shed(
        &self,
        fraction: Option<f64>,
        count: Option<u64>,
        window: Option<Duration>,
        wait: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let mut params = serde_json::Map::new();
        if let Some(f) = fraction {
            params.insert("fraction".into(), f.into());
        }
        if let Some(n) = count {
            params.insert("count".into(), n.into());
        }
        if let Some(w) = window {
            params.insert("window_ms".into(), (w.as_millis() as u64).into());
        }
        params.insert("wait".into(), wait.into());
        let request = self.http.post(format!("{}/admin/drain", self.url)).json(&params);
        let res = self.send(request, "shed").await?;
        res.json().await.context("the instance closed the connection before answering with its shed report")
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        let res = self.send(self.http.get(format!("{}/admin/status", self.url)), "status").await?;
        Ok(res.json().await?)
    }
}

/// `baton drain`.
pub async fn drain(url: &str, token: Option<&str>, wait: bool, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(url, token)?;
    let answer = admin.drain(wait).await?;
    if !wait {
        match json {
            true => println!("{answer}"),
            false => println!("{} is draining (baton drain --wait to follow it to its report)", answer["instance"]),
        }
        return Ok(());
    }
    let report: Report = serde_json::from_value(answer).context("the drain report")?;
    if json {
        // The report's own field order, as the instance logs it.
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} drained in {} ms: {} clients at the start, {} moved, {} acks finished, {} closed at the window's end",
            report.instance,
            report.duration_ms,
            report.sockets_at_start,
            report.closed,
            report.acks_finished,
            report.closed_at_window_end
        );
    }
    Ok(())
}

/// `baton drain --fraction F` or `--count N`: a shed.
pub async fn shed(
    url: &str,
    token: Option<&str>,
    fraction: Option<f64>,
    count: Option<u64>,
    window: Option<Duration>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let admin = Admin::new(url, token)?;
    let answer = admin.shed(fraction, count, window, wait).await?;
    if !wait {
        match json {
            true => println!("{answer}"),
            false => println!(
                "{} is shedding {} of its {} transports over {} ms (--wait to follow it to its report)",
                answer["instance"].as_str().unwrap_or("?"),
                answer["chosen"],
                answer["transports"],
                answer["window_ms"]
            ),
        }
        return Ok(());
    }
    let report: ShedReport = serde_json::from_value(answer).context("the shed report")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} shed {} of {} transports in {} ms ({} WebSocket, {} long-polling), {} acks waited for, {} left first{}",
            report.instance,
            report.closed,
            report.transports_at_start,
            report.duration_ms,
            report.closed_websocket,
            report.closed_polling,
            report.acks_waited_for,
            report.gone_before,
            if report.stopped_by_drain { "; a drain took over" } else { "" },
        );
    }
    Ok(())
}

/// `baton status`.
pub async fn status(url: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let status = Admin::new(url, token)?.status().await?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        let drain = match &status.drain {
            Some(r) => {
                format!("drained in {} ms ({} of {} clients moved)", r.duration_ms, r.closed, r.sockets_at_start)
            }
            None if status.draining => "draining".to_owned(),
            None if status.shedding => "serving, shedding".to_owned(),
            None => "serving".to_owned(),
        };
        let shed = match &status.shed {
            Some(r) => format!("; last shed: {} of {} transports closed", r.closed, r.transports_at_start),
            None => String::new(),
        };
        println!(
            "{}: {drain}, {} sockets connected on {} transports ({} long-polling){shed}",
            status.instance, status.sockets, status.transports, status.polling
        );
    }
    Ok(())
}
