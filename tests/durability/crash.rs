//! The real `claimsd` binary killed with SIGKILL in the middle of a Settle stream, then restarted on
//! the same database (a SQLite file or a PostgreSQL database, as `CLAIMS_TEST_BACKEND` says): every
//! acknowledged claim is stored exactly once, as acknowledged; a claim in flight is stored whole or
//! not at all; the running figures equal the sums over what is stored; and
//! resubmitting every claim replays the stored ones and settles the rest.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claims::domain::{Category, Member};
use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::settlement_service_client::SettlementServiceClient;
use claims::proto::{ClaimRequest, GetSettlementRequest, SettlementReply, StoredSettlement};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::common::random::{date_in, medical_amounts, MedicalAmounts, Odds, XorShift};
use crate::common::replay::{catalogue_with, export_all, key_of, member, replay, settlement_of};
use crate::common::{claim, drop_test_database, fresh_database_url, row, start_server_on, CIXI_2022};
use crate::support::{check_db, stored_counts};

pub(crate) const MEMBERS: usize = 20;
const CLAIMS: usize = 2_000;
/// Replies received before the server is killed.
const KILL_AFTER: usize = 300;
pub(crate) const CIXI_START: &str = "2022-01-01";
/// Each Cixi 2022 claim goes through the four Cixi layers.
const LAYERS: usize = 4;

pub(crate) fn member_id(i: usize) -> String {
    format!("CM{i:02}")
}

/// Enrolls the durability tests' roster: [`MEMBERS`] members, DIBAO from [`CIXI_START`], each in
/// the four Cixi 2022 products; every row must be taken.
pub(crate) async fn enroll_roster(channel: &Channel) {
    let mut rows = Vec::new();
    for i in 0..MEMBERS {
        let id = member_id(i);
        for (p, product) in CIXI_2022.iter().enumerate() {
            let (category, since) = if p == 0 { ("DIBAO", CIXI_START) } else { ("", "") };
            rows.push(row(&id, category, since, product, CIXI_START));
        }
    }
    let summary = MemberServiceClient::new(channel.clone())
        .enroll(tokio_stream::iter(rows))
        .await
        .expect("enroll")
        .into_inner();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.enrollments, (MEMBERS * CIXI_2022.len()) as u64);
}

/// The amounts of [`random_claim`]'s claims.
const AMOUNTS: MedicalAmounts = MedicalAmounts {
    in_scope_inpatient: 100_000..=8_000_000,
    in_scope_other: 5_000..=1_000_000,
    basic_pct: 40..=70,
    critical: (Odds::OneIn(3), 0..=60),
    b_self_pay: (Odds::OneIn(2), 1_000..=800_000),
    out_of_catalogue: (Odds::OneIn(2), 1_000..=3_000_000),
    non_compliant: (Odds::OneIn(5), 100..=100_000),
};

pub(crate) fn random_claim(rng: &mut XorShift, i: usize) -> ClaimRequest {
    let member = member_id(rng.below(MEMBERS as u64) as usize);
    let hospital = *rng.pick(&["H1", "H2"]);
    let date = date_in(rng, 2022);
    let roll = rng.below(100);
    let visit = match roll {
        0..=59 => "INPATIENT",
        60..=89 => *rng.pick(&["OUTPATIENT/GENERAL", "OUTPATIENT/CHRONIC"]),
        _ => "PHARMACY",
    };
    let (lines, upstream) = medical_amounts(rng, roll < 60, &AMOUNTS);
    claim(
        hospital,
        &format!("K{i:05}"),
        &member,
        &date,
        visit,
        "",
        &lines,
        &upstream,
    )
}

/// Everything a check needs: the claims as sent, the engine's members and catalogue.
struct World {
    claims: Vec<ClaimRequest>,
    requests: HashMap<(String, String), ClaimRequest>,
    members: HashMap<String, Member>,
    catalogue: claims::domain::Catalogue,
}

/// Settlements through the restarted server: exported in commit order and replayed through the
/// engine, and checked in the database; returns the export.
async fn check_everything(world: &World, channel: Channel, database_url: &str) -> Vec<StoredSettlement> {
    let exported = export_all(channel).await;
    let in_db = check_db(database_url, LAYERS).await;
    assert_eq!(exported.len(), in_db.len(), "the export holds every stored settlement");
    for s in &exported {
        let b = s.settlement.as_ref().expect("settlement");
        let key = (b.hospital_id.clone(), b.claim_id.clone());
        let row = in_db
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} exported, not in the database"));
        assert_eq!(row.seq as u64, s.sequence, "{key:?}: sequence");
        assert_eq!(row.layers, b.layers.len(), "{key:?}: one layer row per layer");
    }
    replay(&world.catalogue, &world.members, &world.requests, &exported);
    exported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_claim_and_half_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = fresh_database_url(dir.path()).await;

    let (mut server, channel) = start_server_on(&database_url, dir.path(), "1").await;

    // 20 DIBAO members in the four Cixi 2022 products.
    enroll_roster(&channel).await;
    let mut members = HashMap::new();
    for i in 0..MEMBERS {
        let id = member_id(i);
        let enrollments: Vec<(&str, &str)> = CIXI_2022.iter().map(|p| (*p, CIXI_START)).collect();
        members.insert(
            id.clone(),
            member(&id, &[(CIXI_START, Category::Dibao)], &enrollments, "0.00"),
        );
    }
    let mut rng = XorShift::new(0xc1a5_0000_dead_beef);
    let claims: Vec<ClaimRequest> = (0..CLAIMS).map(|i| random_claim(&mut rng, i)).collect();
    let world = World {
        requests: claims.iter().map(|c| (key_of(c), c.clone())).collect(),
        claims,
        members,
        catalogue: catalogue_with(&[]),
    };
    assert_eq!(world.requests.len(), CLAIMS, "distinct claim ids");

    // One stream; a task keeps sending while the replies are counted; the server is killed after
    // KILL_AFTER replies, with claims still in flight.
    let (tx, rx) = mpsc::channel::<ClaimRequest>(32);
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let claims = world.claims.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            for c in claims {
                if tx.send(c).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let started = Instant::now();
    let mut replies = SettlementServiceClient::new(channel)
        .settle(ReceiverStream::new(rx))
        .await
        .expect("settle stream opens")
        .into_inner();
    let mut acked: Vec<SettlementReply> = Vec::new();
    let mut killed: Option<(usize, Duration)> = None;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), replies.message()).await {
            Err(_) => panic!("no reply for 30 s after {} replies", acked.len()),
            Ok(Ok(Some(reply))) => {
                let i = acked.len();
                assert_eq!(reply.claim_id, world.claims[i].claim_id, "replies in request order");
                assert!(!reply.replay, "{}: first submission", reply.claim_id);
                settlement_of(&reply);
                acked.push(reply);
                if acked.len() == KILL_AFTER && killed.is_none() {
                    let at = sent.load(Ordering::SeqCst);
                    server.kill();
                    killed = Some((at, started.elapsed()));
                }
            }
            Ok(Ok(None)) => break "the stream ended".to_owned(),
            Ok(Err(status)) => break format!("{:?}: {}", status.code(), status.message()),
        }
    };
    sender.abort();
    let _ = sender.await;
    let (sent_at_kill, kill_time) = killed.expect("the server was killed mid-stream");
    let sent_total = sent.load(Ordering::SeqCst);
    assert!(
        acked.len() < sent_total,
        "claims must still be in flight at the kill ({} replies, {sent_total} sent)",
        acked.len()
    );

    // Restart on the same database.
    let (server2, channel) = start_server_on(&database_url, dir.path(), "2").await;

    // Every acknowledged claim: stored exactly once, as acknowledged. The first lookups go one at a
    // time to measure a unary call's latency; the rest 16 at a time.
    let mut client = SettlementServiceClient::new(channel.clone());
    let get = |reply: &SettlementReply| {
        let mut client = client.clone();
        let replied = settlement_of(reply).clone();
        async move {
            let b = replied.settlement.as_ref().expect("settlement");
            let stored = client
                .get_settlement(GetSettlementRequest {
                    hospital_id: b.hospital_id.clone(),
                    claim_id: b.claim_id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("acknowledged claim {} lost in the crash: {e}", b.claim_id))
                .into_inner();
            assert_eq!(stored, replied, "{}: stored differently from its reply", b.claim_id);
        }
    };
    const TIMED: usize = 20;
    let timed = Instant::now();
    for reply in &acked[..TIMED] {
        get(reply).await;
    }
    let unary_latency = timed.elapsed() / TIMED as u32;
    futures::stream::iter(&acked[TIMED..])
        .map(get)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    // Replies came in request order: the acknowledged claims are the first ones sent.
    let acked_keys: Vec<(String, String)> = world.claims[..acked.len()].iter().map(key_of).collect();
    let counts = stored_counts(&database_url, &acked_keys).await;
    for (key, n) in acked_keys.iter().zip(&counts) {
        assert_eq!(*n, 1, "{key:?}: acknowledged claim stored {n} times");
    }

    // Whatever else is stored is whole, was sent, and keeps each member's stream order.
    let after_restart = check_everything(&world, channel.clone(), &database_url).await;
    let stored: BTreeSet<(String, String)> = after_restart
        .iter()
        .map(|s| {
            let b = s.settlement.as_ref().expect("settlement");
            (b.hospital_id.clone(), b.claim_id.clone())
        })
        .collect();
    let position: HashMap<(String, String), usize> =
        world.claims.iter().enumerate().map(|(i, c)| (key_of(c), i)).collect();
    for key in &stored {
        assert!(position[key] < sent_total, "{key:?} stored but never sent");
    }
    let mut member_gap: HashMap<&str, usize> = HashMap::new();
    for (i, c) in world.claims.iter().enumerate() {
        let is_stored = stored.contains(&key_of(c));
        match member_gap.get(c.member_id.as_str()) {
            Some(gap) if is_stored => panic!(
                "member {}: claim {} (#{i}) stored although their earlier claim #{gap} of the stream is not",
                c.member_id, c.claim_id
            ),
            None if !is_stored => {
                member_gap.insert(c.member_id.as_str(), i);
            }
            _ => {}
        }
    }
    let prefix = world.claims.iter().take_while(|c| stored.contains(&key_of(c))).count();
    let in_flight_stored = stored.len() - acked.len();

    // Resubmit all the claims over a new stream: the stored ones replay unchanged, the others settle.
    let before: HashMap<(String, String), StoredSettlement> = after_restart
        .iter()
        .map(|s| {
            let b = s.settlement.as_ref().expect("settlement");
            ((b.hospital_id.clone(), b.claim_id.clone()), s.clone())
        })
        .collect();
    let resubmit_started = Instant::now();
    let mut again = client
        .settle(tokio_stream::iter(world.claims.clone()))
        .await
        .expect("second stream opens")
        .into_inner();
    let mut replays = 0;
    let mut i = 0;
    while let Some(reply) = tokio::time::timeout(Duration::from_secs(60), again.message())
        .await
        .expect("a reply within 60 s")
        .expect("second stream")
    {
        let request = &world.claims[i];
        assert_eq!(reply.claim_id, request.claim_id, "replies in request order");
        let s = settlement_of(&reply);
        match before.get(&key_of(request)) {
            Some(original) => {
                assert!(reply.replay, "{}: stored before, so a replay", request.claim_id);
                assert_eq!(
                    s, original,
                    "{}: a replay returns the original settlement",
                    request.claim_id
                );
                replays += 1;
            }
            None => assert!(!reply.replay, "{}: never stored, so no replay", request.claim_id),
        }
        i += 1;
    }
    let resubmit_time = resubmit_started.elapsed();
    assert_eq!(i, CLAIMS, "one reply per resubmitted claim");
    assert_eq!(replays, stored.len());
    for key in &acked_keys {
        assert!(
            before.contains_key(key),
            "{key:?}: acknowledged, so stored before the resubmission"
        );
    }

    let all_keys: Vec<(String, String)> = world.claims.iter().map(key_of).collect();
    let counts = stored_counts(&database_url, &all_keys).await;
    assert!(counts.iter().all(|n| *n == 1), "every claim stored exactly once");
    let finally = check_everything(&world, channel, &database_url).await;
    assert_eq!(finally.len(), CLAIMS);
    for (key, original) in &before {
        let now = finally
            .iter()
            .find(|s| s.sequence == original.sequence)
            .unwrap_or_else(|| panic!("{key:?} lost its sequence"));
        assert_eq!(now, original, "{key:?}: a settlement never changes");
    }
    drop(server2);
    drop_test_database(&database_url).await;

    println!(
        "crash: killed after {} replies at {kill_time:.2?} ({:.0} claims/s acknowledged), {sent_at_kill} sent \
         at the kill, {sent_total} sent in all; stream end: {end}; after restart {} stored ({in_flight_stored} \
         in flight at the kill and committed; stream-order prefix {prefix}); resubmission of {CLAIMS}: {replays} \
         replays, {} new, in {resubmit_time:.2?} ({:.0} claims/s); GetSettlement one at a time: {unary_latency:.2?} a call",
        acked.len(),
        KILL_AFTER as f64 / kill_time.as_secs_f64(),
        stored.len(),
        CLAIMS - replays,
        CLAIMS as f64 / resubmit_time.as_secs_f64(),
    );
}
