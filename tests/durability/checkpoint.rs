//! The SQLite writer leaves checkpoints to a thread of its own (no commit waits for one), and that
//! thread does copy every commit from the WAL into the database file. Read from a copy of the
//! database file alone (without its WAL), the settlements are there once the writes stop; were no
//! checkpoint to run, the copy would hold none of them.

use std::time::{Duration, Instant};

use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::ClaimRequest;

use crate::common::random::XorShift;
use crate::common::start_server;
use crate::crash::{enroll_roster, random_claim};

const CLAIMS: usize = 300;

/// Settlements in the database file alone: a copy of it without its `-wal` file, opened read-only.
fn settlements_in_main_file(db: &std::path::Path, scratch: &std::path::Path) -> i64 {
    let copy = scratch.join("main-file-only.db");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(db, &copy).expect("copy the database file");
    let conn = rusqlite::Connection::open_with_flags(&copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the copy");
    // Before any checkpoint the copy may not even have the table.
    conn.query_row("SELECT COUNT(*) FROM settlements", [], |r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test]
async fn commits_reach_the_database_file_through_the_checkpoint_thread() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, channel) = start_server(dir.path(), "checkpoint").await;
    enroll_roster(&channel).await;

    let mut rng = XorShift::new(0xc4ec_4901);
    let claims: Vec<ClaimRequest> = (0..CLAIMS).map(|i| random_claim(&mut rng, i)).collect();
    let mut stream = SettlementServiceClient::new(channel)
        .settle(tokio_stream::iter(claims))
        .await
        .expect("stream opens")
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await.expect("stream ok") {
        replies.push(reply);
    }
    assert_eq!(replies.len(), CLAIMS);
    assert!(replies
        .iter()
        .all(|r| matches!(r.result, Some(ReplyResult::Settlement(_)))));

    let db = dir.path().join("claims.db");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = settlements_in_main_file(&db, dir.path());
    while found < CLAIMS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = settlements_in_main_file(&db, dir.path());
    }
    assert_eq!(
        found, CLAIMS as i64,
        "settlements in the database file without its WAL, 20 s after the last commit"
    );
}
