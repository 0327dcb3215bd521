//! Standard gRPC health checking and server reflection.

// Test helpers may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::*;
use crate::support::{reflected_services, STREAM_WAIT};

#[tokio::test]
async fn health_check_reports_serving() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in [
        "",
        "claims.v1.SettlementService",
        "claims.v1.TermsService",
        "claims.v1.MemberService",
        "claims.v1.ReportService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    let status = health
        .check(HealthCheckRequest {
            service: "claims.v1.NoSuchService".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let app = spawn_app().await;
    let names = reflected_services(&app).await;
    for expected in [
        "claims.v1.SettlementService",
        "claims.v1.TermsService",
        "claims.v1.MemberService",
        "claims.v1.ReportService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_is_served_for_older_tools() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;

    let app = spawn_app().await;
    let mut reflection = AlphaClient::new(app.channel().await);
    let request = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection stream")
        .into_inner();
    let response = tokio::time::timeout(STREAM_WAIT, responses.next())
        .await
        .expect("an answer in time")
        .expect("an answer")
        .expect("no error");
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "claims.v1.SettlementService"));
    app.stop().await;
}
