//! The group commit alone: `Store::write_batch` of one batch as the e2e load produces it —
//! 200 packets of 25 positions with 6 IO attributes each, all new — on durable SQLite
//! (`synchronous = full`: the WAL is fsynced by every commit) and on PostgreSQL
//! (FLEETGATE_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test, in a fresh schema
//! dropped afterwards; skipped when unreachable). No network, decoding or rule stages: this is
//! the ceiling the storage puts on ingest on this machine (rows/s = 5,000 / time per batch).
//! Each packet is packed into its chunk before the timed commit, as the shards do in the
//! daemon (`Store::pack`); `storage::chunk::tests::small_chunk_levels` times that packing.
//!
//! Run: `cargo bench --bench storage`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetgate::config::StorageConfig;
use fleetgate::storage::Store;

#[path = "common/batch.rs"]
mod batch;
#[path = "common/pg.rs"]
mod pg;

/// 200 packets of 25 records: the 5,000-row batches the e2e load (200 devices × 25 records,
/// all in flight at once) commits.
const PACKETS: usize = 200;
const RECORDS: usize = 25;

fn bench_store(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: Arc<dyn Store>) {
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Elements((PACKETS * RECORDS) as u64));
    g.sample_size(30);
    g.bench_function(name, |b| {
        b.to_async(rt).iter_batched(
            || {
                // Packed as the shards do before the writer sees a packet (`Store::pack`):
                // not the commit's work, so not timed here.
                let mut items = batch::batch(PACKETS, RECORDS, 0);
                for it in &mut items {
                    store.pack(it);
                }
                items
            },
            |items| {
                let store = store.clone();
                async move { store.write_batch(&items).await.expect("commit") }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = StorageConfig {
        url: format!("sqlite://{}/bench.db", dir.path().display()),
        sqlite_synchronous: "full".into(),
        ..Default::default()
    };
    let store = rt
        .block_on(fleetgate::storage::open(&sqlite))
        .expect("sqlite")
        .core;
    bench_store(c, &rt, "sqlite_full_5000_rows", store);

    match pg::Schema::create(&rt, "fgstorage") {
        Err(e) => eprintln!("postgres: skipped ({e})"),
        Ok(schema) => {
            let pg = StorageConfig {
                url: schema.url.clone(),
                ..Default::default()
            };
            let store = rt
                .block_on(fleetgate::storage::open(&pg))
                .expect("postgres")
                .core;
            bench_store(c, &rt, "postgres_5000_rows", store);
            schema.drop(&rt);
        }
    }
}

criterion_group!(benches, storage);
criterion_main!(benches);
