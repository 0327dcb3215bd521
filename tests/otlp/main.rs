//! Traces over OTLP: the real `claimsd`, started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! collector this test runs, exports its spans (flushed at SIGTERM); the settle span names the
//! hospital and the claim, and no span carries the member id.
// A panic is a failed test; the shared harness has an eight-argument `claim(...)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::too_many_arguments)]

#[path = "../common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claims::proto::member_service_client::MemberServiceClient;
use claims::proto::settlement_service_client::SettlementServiceClient;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

/// A span as received: name and string attributes.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    attributes: Vec<(String, String)>,
    service: String,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        name: span.name.clone(),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn spans_reach_the_otlp_collector_without_member_ids() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("http://127.0.0.1:{port}");
    let (mut claimsd, channel) = start_server_with_env(
        dir.path(),
        "otlp",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "claimsd-test"),
        ],
    )
    .await;
    let rows = CIXI_2022
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                row("MEMBER-7", "DIBAO", "2022-01-01", p, "2022-01-01")
            } else {
                row("MEMBER-7", "", "", p, "2022-01-01")
            }
        })
        .collect::<Vec<_>>();
    MemberServiceClient::new(channel.clone())
        .enroll(tokio_stream::iter(rows))
        .await
        .expect("enroll");
    let mut request = claim_a1("H1", "H1-0001");
    request.member_id = "MEMBER-7".into();
    SettlementServiceClient::new(channel)
        .settle_one(request)
        .await
        .expect("settles");

    // SIGTERM: claimsd drains and flushes its spans before exiting.
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(claimsd.child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while claimsd.child.try_wait().expect("status").is_none() {
        assert!(Instant::now() < deadline, "claimsd did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spans = collector.spans.lock().expect("lock").clone();
    let settle = spans.iter().find(|s| s.name == "settle_one").unwrap_or_else(|| {
        panic!(
            "no settle_one span among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(settle.service, "claimsd-test");
    let attribute = |key: &str| {
        settle
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attribute("hospital_id"), Some("H1"));
    assert_eq!(attribute("claim_id"), Some("H1-0001"));
    for span in &spans {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains("MEMBER-7"),
                "span {} carries the member id in {key}",
                span.name
            );
        }
    }
    println!("otlp: {} spans received", spans.len());
}
