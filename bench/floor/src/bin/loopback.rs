//! The kernel's cost of one write on loopback: the floor under the floor.
//!
//! One thread writes the same WebSocket-sized frame to each of `--clients` loopback TCP
//! connections in turn, `--rate` times a second, with one system call per frame (a
//! `send` of one buffer, or with `--vectored` a `writev` of a header and a payload, as
//! baton's transport writes); a tokio runtime on other threads reads and drops what
//! arrives, as baton-bench's clients do (epoll, one thread). The writer's own CPU time
//! (from /proc/thread-self/stat: user and kernel, the receiver's TCP work on loopback
//! included, since it runs in the sender's context) per 1000 writes is the least any
//! server of this design can spend per delivery on this machine.
//!
//! `cargo run --release -p baton-floor --bin loopback -- --clients 200 --rate 200 --seconds 10`

use std::io::{IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncReadExt;

#[derive(Parser)]
struct Args {
    /// Connections written to (the room's size).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Messages per second, each written to every connection.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long to write.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bytes per frame (a `new-chat` frame of the bench is about 300).
    #[arg(long, default_value_t = 300)]
    frame: usize,
    /// `writev` of a 4-byte header and the payload instead of one `send`.
    #[arg(long)]
    vectored: bool,
}

/// This thread's CPU time so far: (user, kernel).
fn thread_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("linux");
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let tick = |i: usize| Duration::from_millis(fields[i].parse::<u64>().unwrap() * 10);
    (tick(11), tick(12))
}

fn main() {
    let args = Args::parse();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    // The readers: baton-bench's clients read and drop in a tokio runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_io().build().unwrap();
    let clients = args.clients;
    runtime.spawn(async move {
        for _ in 0..clients {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mut writers: Vec<TcpStream> = (0..clients).map(|_| listener.accept().unwrap().0).collect();
    for w in &writers {
        w.set_nodelay(true).unwrap();
    }

    let head = [0x81u8, 126, (args.frame >> 8) as u8, args.frame as u8];
    let payload = vec![b'x'; args.frame.saturating_sub(head.len())];
    let whole: Vec<u8> = head.iter().chain(&payload).copied().collect();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let (user0, kernel0) = thread_cpu();
    let mut writes = 0u64;
    let mut next = Instant::now();
    while Instant::now() < end {
        for w in &mut writers {
            let n = if args.vectored {
                w.write_vectored(&[IoSlice::new(&head), IoSlice::new(&payload)]).unwrap()
            } else {
                w.write(&whole).unwrap()
            };
            assert_eq!(n, whole.len(), "the socket took part of a frame: lower the rate");
            writes += 1;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let (user1, kernel1) = thread_cpu();
    let per_1000 = |d: Duration| d.as_secs_f64() * 1e3 / (writes as f64 / 1000.0);
    println!(
        "{{\"writes\":{writes},\"clients\":{clients},\"rate\":{},\"frame\":{},\"call\":\"{}\",\
         \"user_cpu_ms_per_1000\":{:.3},\"kernel_cpu_ms_per_1000\":{:.3},\"cpu_ms_per_1000\":{:.3}}}",
        args.rate,
        args.frame,
        if args.vectored { "writev" } else { "send" },
        per_1000(user1 - user0),
        per_1000(kernel1 - kernel0),
        per_1000((user1 - user0) + (kernel1 - kernel0)),
    );
}
