//! The server's CPU time and memory, read from `/proc` (Linux only), summed over the
//! processes given with `--server-pid`.

/// Clock ticks per second of `utime` and `stime` in `/proc/<pid>/stat` (`getconf CLK_TCK`).
pub(super) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is what Linux reports on every common architecture.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Snapshot {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// stime alone: the part of `cpu_ticks` spent in the kernel on the processes' behalf.
    pub kernel_ticks: u64,
    /// VmRSS, in KiB.
    pub rss_kib: u64,
}

/// The processes' figures summed; `None` (with a warning on stderr) when no pid was
/// given or one could not be read.
pub(super) fn snapshot(pids: &[u32]) -> Option<Snapshot> {
    if pids.is_empty() {
        return None;
    }
    let mut total = Snapshot { cpu_ticks: 0, kernel_ticks: 0, rss_kib: 0 };
    for &pid in pids {
        match read(pid) {
            Ok(s) => {
                total.cpu_ticks += s.cpu_ticks;
                total.kernel_ticks += s.kernel_ticks;
                total.rss_kib += s.rss_kib;
            }
            Err(e) => {
                eprintln!("bench: cannot read server process {pid}: {e}; server figures will be null");
                return None;
            }
        }
    }
    Some(total)
}

fn read(pid: u32) -> Result<Snapshot, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let (user, kernel) = cpu_ticks(&stat)?;
    Ok(Snapshot { cpu_ticks: user + kernel, kernel_ticks: kernel, rss_kib: rss_kib(&status)? })
}

/// Fields 14 (utime) and 15 (stime) of `/proc/<pid>/stat`, counted after the command name,
/// which is in parentheses and may itself hold spaces or parentheses.
fn cpu_ticks(stat: &str) -> Result<(u64, u64), String> {
    let after = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or("no ')' in stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field k is at index k - 3.
    let field = |k: usize| fields.get(k - 3).and_then(|f| f.parse::<u64>().ok()).ok_or(format!("no field {k}"));
    Ok((field(14)?, field(15)?))
}

/// `VmRSS:   12345 kB` from `/proc/<pid>/status`.
fn rss_kib(status: &str) -> Result<u64, String> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS in status")?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("bad line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Ok((250, 75)));
        assert_eq!(rss_kib("Name:\tbaton\nVmRSS:\t   20480 kB\nThreads: 8\n"), Ok(20480));
        let own = read(std::process::id()).unwrap();
        assert!(own.rss_kib > 0);
    }
}
