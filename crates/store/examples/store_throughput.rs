//! Measures the SQLite store's group-commit write throughput.
//!
//! `cargo run --release -p verge-store --example store_throughput -- [writers] [total] [max_batch]`
//! (defaults: 64 writers, 40000 creates of 300 bytes, max_batch 512).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use verge_store::{Labels, SqliteOptions, SqliteStore, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let total: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(40_000);
    let max_batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(512);

    let dir = tempfile::tempdir()?;
    let mut opts = SqliteOptions::new(dir.path().join("bench.db"));
    opts.max_batch = max_batch;
    let store = Arc::new(SqliteStore::open(opts).await?);
    let value = Bytes::from(vec![b'x'; 300]);
    let per_writer = total / writers;

    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|t| {
            let store = store.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    store
                        .create(&format!("bench/{t}/{i}"), value.clone(), Labels::new())
                        .await?;
                }
                Ok::<_, verge_store::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let n = per_writer * writers;
    println!(
        "{n} creates (300 B values) by {writers} concurrent writers, max_batch {max_batch}: \
         {elapsed:.2?} = {:.0} writes/s",
        n as f64 / elapsed.as_secs_f64()
    );
    store.close().await;
    Ok(())
}
