//! Every storage call has a deadline, and a frozen PostgreSQL path strands no pool
//! connection (src/storage/deadline.rs). The store reaches PostgreSQL through the in-test
//! proxy (`tests/common/proxy.rs`); two tasks read from it in a loop on a pool of two, and the
//! proxy freezes the open connections mid-query (no FIN, no RST, ever: a path that died).
//! Every call must then come back as `StorageError::Timeout` within its deadline — none
//! hangs — and once new connections are relayed again the pool must serve calls again,
//! although the frozen sockets stay open for the rest of the test.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use fleetgate::storage::{self, StorageConfig, StorageError};
use sqlx::Connection;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    timeouts: AtomicU64,
    other: AtomicU64,
    /// Longest call, milliseconds.
    longest_ms: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_path_times_calls_out_and_strands_no_pool_connection() {
    let schema = common::pg::PgSchema::create().await;
    let upstream = "127.0.0.1:5432";
    assert!(
        schema.url.contains(upstream),
        "the test proxies {upstream}; FLEETGATE_TEST_PG_URL points elsewhere"
    );
    let proxy = Proxy::start(upstream.parse().unwrap()).await;
    let cfg = StorageConfig {
        url: schema.url.replace(upstream, &proxy.addr.to_string()),
        max_connections: 2,
        statement_timeout_s: 1,
        bulk_timeout_s: 2,
        ..Default::default()
    };
    let stores = storage::open(&cfg).await.expect("open through the proxy");
    // Enough device states that a read spends its time in the query, not in the release
    // ping (which only sqlx itself bounds, see docs/reliability.md): the freeze lands mid-query.
    let mut db = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sqlx::query(
        "INSERT INTO device_state (device_id, protocol, last_seen) \
         SELECT 'dev' || g, 'teltonika', g FROM generate_series(1, 20000) g",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let _ = db.close().await;
    assert_eq!(stores.core.device_states().await.unwrap().len(), 20_000);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stores, stop, tally) = (stores.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = stores.core.device_states().await;
                    let ms = t.elapsed().as_millis() as u64;
                    tally.longest_ms.fetch_max(ms, Ordering::Relaxed);
                    match r {
                        Ok(_) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(StorageError::Timeout { .. }) => {
                            tally.timeouts.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => tally.other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tally.ok.load(Ordering::Relaxed) > 0,
        "reads ran before the freeze"
    );

    proxy.set(Mode::Freeze);
    let ok_at_freeze = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let timeouts = tally.timeouts.load(Ordering::Relaxed);
    // A read that had its answer before the freeze may still complete; nothing after it.
    let ok_during = tally.ok.load(Ordering::Relaxed) - ok_at_freeze;
    assert!(
        timeouts >= 2,
        "calls on the frozen path come back as timeouts ({timeouts})"
    );
    assert!(
        tally.longest_ms.load(Ordering::Relaxed) < 3_000,
        "no call outlives its 2 s bulk deadline by much (longest {} ms)",
        tally.longest_ms.load(Ordering::Relaxed)
    );
    assert!(
        ok_during <= 2,
        "{ok_during} reads succeeded on a frozen path"
    );

    // New connections are relayed again; the frozen ones stay open and silent.
    proxy.set(Mode::Up);
    let up = Instant::now();
    let ok_at_up = tally.ok.load(Ordering::Relaxed);
    while tally.ok.load(Ordering::Relaxed) == ok_at_up {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "the pool never served a call after the path came back: its connections are \
             stranded on the frozen sockets ({} timeouts since)",
            tally.timeouts.load(Ordering::Relaxed) - timeouts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = up.elapsed();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("reader stops")
            .unwrap();
    }
    // Every port is served again.
    let (a, b) = tokio::join!(stores.core.device_states(), stores.zones.memberships());
    a.expect("core store served");
    b.expect("zone store served");
    println!(
        "frozen 6 s: {timeouts} timeouts, {} other errors, longest call {} ms; served again {recovered:?} after the path came back; proxy held {} connection attempts",
        tally.other.load(Ordering::Relaxed),
        tally.longest_ms.load(Ordering::Relaxed),
        proxy.held.load(Ordering::Relaxed),
    );
    drop(schema);
}
