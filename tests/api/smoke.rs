use crate::common::*;

#[tokio::test]
async fn worked_example_a_first_claim_through_the_api() {
    let app = spawn_app().await;
    enroll_cixi(&app, "M1", "DIBAO").await;
    let mut client = app.settlements().await;
    let request = claim_a1("H1", "H1-0001");
    let reply = client.settle_one(request.clone()).await.expect("settles").into_inner();
    assert!(!reply.replay);
    let s = reply.settlement.and_then(|s| s.settlement).expect("settlement");
    let payouts: Vec<&str> = s.layers.iter().map(|l| l.payout.as_str()).collect();
    assert_eq!(payouts, vec!["16000.00", "0.00", "9000.00", "0.00"]);
    assert_eq!(s.out_of_pocket, "31500.00");
    let again = client.settle_one(request).await.expect("replays").into_inner();
    assert!(again.replay);
    app.stop().await;
}
