//! Piece transfer throughput over loopback, beside `cat FILE > /dev/null` of a file of
//! the same size in the same run (the ratio is what to compare across machines).
//!
//! `cargo bench -p shoal-peer --bench transfer` (optionally `SHOAL_BENCH_MIB=1024`).
//! Moves the total in 16 MiB pieces between two mutual-TLS endpoints on 127.0.0.1:
//! once one piece at a time (one stream after another), once four at a time. Prints a
//! table; asserts nothing (benchmarks are not tests).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_peer::tls;
use shoal_peer::transfer::{
    MemorySource, PieceClient, Seeding, TransferStats, UploadLimits, serve,
};
use shoal_proto::Digest;

const PIECE: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let total_mib: usize = std::env::var("SHOAL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pieces = (total_mib << 20).div_ceil(PIECE) as u32;
    let bytes = pieces as usize * PIECE;

    let cat = cat_rate(bytes);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (one, four) = runtime.block_on(quic_rates(pieces));

    println!("{:<40} {:>10}", "what", "MB/s");
    println!(
        "{:<40} {:>10.0}",
        format!("cat {} MiB > /dev/null", bytes >> 20),
        cat
    );
    for (name, rate) in [
        ("quic, 1 piece at a time", one),
        ("quic, 4 pieces at a time", four),
    ] {
        println!("{name:<40} {rate:>10.0}   ({:.2} of cat)", rate / cat);
    }
}

async fn quic_rates(pieces: u32) -> (f64, f64) {
    let tls = tls::ephemeral().expect("ephemeral TLS");
    let digest = Digest::from_sha256([9; 32]);
    let piece: Bytes = (0..PIECE).map(|i| i as u8).collect::<Vec<_>>().into();
    let source = Arc::new(MemorySource::new());
    for i in 0..pieces {
        source.insert(digest, i, piece.clone());
    }
    let server = tls::endpoint("127.0.0.1:0".parse().unwrap(), &tls).expect("server endpoint");
    let addr = server.local_addr().expect("bound");
    let limits = UploadLimits {
        upload_slots: 8,
        rate_limit: None,
    };
    let stats = Arc::new(TransferStats::default());
    tokio::spawn(serve(
        server,
        source,
        limits,
        stats,
        Seeding::new(),
        std::future::pending::<()>(),
    ));
    let client_endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), &tls).expect("client");
    let client = Arc::new(PieceClient::new(client_endpoint));
    // Warm up: handshake, congestion window.
    for i in 0..2 {
        client
            .fetch(addr, &digest, i, PIECE as u32, TIMEOUT)
            .await
            .expect("warm-up fetch");
    }

    let start = Instant::now();
    for i in 0..pieces {
        client
            .fetch(addr, &digest, i, PIECE as u32, TIMEOUT)
            .await
            .expect("fetch");
    }
    let one = rate(pieces as usize * PIECE, start.elapsed());

    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|lane| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (lane..pieces).step_by(4) {
                    client
                        .fetch(addr, &digest, i, PIECE as u32, TIMEOUT)
                        .await
                        .expect("fetch");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("fetch task");
    }
    let four = rate(pieces as usize * PIECE, start.elapsed());
    (one, four)
}

/// `cat FILE > /dev/null` of a file of `bytes` (written first, so it is in the page cache).
fn cat_rate(bytes: usize) -> f64 {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let block: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for _ in 0..(bytes >> 20) {
        file.write_all(&block).expect("write temp file");
    }
    file.flush().expect("flush temp file");
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let status = Command::new("cat")
            .arg(file.path())
            .stdout(Stdio::null())
            .status()
            .expect("run cat");
        assert!(status.success(), "cat failed");
        best = best.max(rate(bytes, start.elapsed()));
    }
    best
}

fn rate(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}
