//! `baton-bench`: drives a server of the wire contract and prints one JSON line of
//! figures on stdout (progress on stderr). Scenarios, flags and output fields:
//! docs/benchmarks.md.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    version,
    about = "Load generator: drive a server that implements the wire contract over REST and \
             Socket.IO (WebSocket) and print one JSON line of figures on stdout."
)]
struct Cli {
    #[command(flatten)]
    args: baton_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = baton_bench::run(&cli.args).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
