use clap::Parser;
use tracing_subscriber::EnvFilter;

use baton::config::{Cli, Command, LogFormat};
use baton::server::{Server, open_store, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_large_frees_to_the_system();
    let cli = Cli::parse();
    init_tracing(cli.config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        // One config value decides: with REDIS_URL, an instance of a cluster.
        Command::Serve if cli.config.redis_url.is_some() => {
            Server::build_cluster(cli.config).await?.run_until(shutdown_signal()).await
        }
        Command::Serve => Server::build(cli.config).await?.run_until(shutdown_signal()).await,
        Command::Drain { url, fraction, count, window, wait, json } => {
            let token = cli.config.admin_token.as_deref();
            if fraction.is_some() || count.is_some() {
                baton::operator::shed(&url, token, fraction, count, window, wait, json).await
            } else if window.is_some() {
                anyhow::bail!("--window applies to a shed (with --fraction or --count); a drain's is --drain-window")
            } else {
                baton::operator::drain(&url, token, wait, json).await
            }
        }
        Command::Status { url, json } => baton::operator::status(&url, cli.config.admin_token.as_deref(), json).await,
        Command::Migrate => {
            let store = open_store(&cli.config).await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// glibc serves allocations above a threshold with mmap, and frees them back to the
/// system, but it raises that threshold (up to 32 MiB) each time such a block is
/// freed: after the first few password hashes (19 MiB each), their memory came from
/// the heaps of the blocking threads and stayed there. A fixed 1 MiB threshold keeps
/// large blocks mmap'd and returned on free.
fn return_large_frees_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter (under the allocator's own locks).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
