//! SIGTERM drains the real `claimsd`: the stream in progress is served to its end (every claim sent
//! gets its reply and is stored), new connections are refused, and the process exits cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use claims::proto::settlement_reply::Result as ReplyResult;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::{ClaimRequest, GetSettlementRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::common::random::XorShift;
use crate::common::{drop_test_database, fresh_database_url, start_server_on};
use crate::crash::{enroll_roster, random_claim};

const BEFORE_TERM: usize = 100;
const AFTER_TERM: usize = 100;

#[tokio::test]
async fn sigterm_finishes_the_open_stream_refuses_new_connections_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = fresh_database_url(dir.path()).await;
    let (mut server, channel) = start_server_on(&database_url, dir.path(), "drain").await;
    enroll_roster(&channel).await;

    let mut rng = XorShift::new(0x5157_7e12);
    let claims: Vec<ClaimRequest> = (0..BEFORE_TERM + AFTER_TERM)
        .map(|i| random_claim(&mut rng, i))
        .collect();
    let (tx, rx) = mpsc::channel::<ClaimRequest>(BEFORE_TERM + AFTER_TERM);
    let mut replies = SettlementServiceClient::new(channel.clone())
        .settle(ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    for c in &claims[..BEFORE_TERM] {
        tx.send(c.clone()).await.expect("send");
    }
    // Wait for the first reply, so the stream is surely in progress, then SIGTERM.
    let first = tokio::time::timeout(Duration::from_secs(30), replies.message())
        .await
        .expect("a reply within 30 s")
        .expect("stream ok")
        .expect("a reply");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let term_at = Instant::now();

    // The open stream goes on: claims sent after the signal are settled too.
    for c in &claims[BEFORE_TERM..] {
        tx.send(c.clone()).await.expect("send after SIGTERM");
    }
    drop(tx);
    let mut got = vec![first];
    while let Some(reply) = tokio::time::timeout(Duration::from_secs(30), replies.message())
        .await
        .expect("replies keep coming while draining")
        .expect("stream ok while draining")
    {
        got.push(reply);
    }
    assert_eq!(got.len(), claims.len(), "every claim of the open stream gets its reply");
    for (reply, claim) in got.iter().zip(&claims) {
        assert_eq!(reply.claim_id, claim.claim_id);
        assert!(
            matches!(reply.result, Some(ReplyResult::Settlement(_))),
            "{}: {:?}",
            reply.claim_id,
            reply.result
        );
    }

    // New connections are refused while draining or after.
    let url = server.url();
    let refused = Channel::from_shared(url).expect("url").connect().await;
    if let Ok(channel) = refused {
        // A connection the OS accepted before the listener closed must not serve new requests.
        let attempt = SettlementServiceClient::new(channel)
            .get_settlement(GetSettlementRequest {
                hospital_id: claims[0].hospital_id.clone(),
                claim_id: claims[0].claim_id.clone(),
            })
            .await;
        assert!(attempt.is_err(), "a new request after SIGTERM was served");
    }

    // The process exits on its own, successfully, well within the drain timeout (10 s).
    let exit = loop {
        if let Some(status) = server.child.try_wait().expect("child status") {
            break status;
        }
        assert!(
            term_at.elapsed() < Duration::from_secs(20),
            "claimsd still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "claimsd exited with {exit}");
    println!(
        "drain: {} claims answered, exit after {:?}",
        got.len(),
        term_at.elapsed()
    );

    // Everything answered is stored.
    let (server2, channel) = start_server_on(&database_url, dir.path(), "after-drain").await;
    let mut client = SettlementServiceClient::new(channel);
    for claim in &claims {
        let stored = client
            .get_settlement(GetSettlementRequest {
                hospital_id: claim.hospital_id.clone(),
                claim_id: claim.claim_id.clone(),
            })
            .await
            .expect("stored after the drain")
            .into_inner();
        assert_eq!(stored.settlement.expect("settlement").claim_id, claim.claim_id);
    }
    drop(server2);
    drop_test_database(&database_url).await;
}
