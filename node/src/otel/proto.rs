//! The OTLP messages Troupe sends: one `ExportTraceServiceRequest` with one resource, one scope
//! and its spans, built with `opentelemetry-proto`'s generated (prost) types. Spans are built
//! after the fact from applied log times (ids derived, not random: `otel/mod.rs`), so the SDK's
//! tracer and exporter are not used; the request goes over the node's own HTTP client.

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span's status is ERROR; `None`: OK.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message;

fn key_value(key: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(match v {
                Value::Str(s) => any_value::Value::StringValue(s.clone()),
                Value::Int(i) => any_value::Value::IntValue(*i),
                Value::Bool(b) => any_value::Value::BoolValue(*b),
            }),
        }),
        ..Default::default()
    }
}

const NS_PER_MS: u64 = 1_000_000;

/// One OTLP/HTTP export request (protobuf) holding `spans` under one resource and one scope.
pub fn export_request(resource: &[(&'static str, Value)], spans: &[Span]) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| key_value(k, v)).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "troupe".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn span(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: s.start_ms.saturating_mul(NS_PER_MS),
        end_time_unix_nano: s.end_ms.max(s.start_ms).saturating_mul(NS_PER_MS),
        attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        status: Some(match &s.error {
            Some(m) => Status {
                message: m.clone(),
                code: status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: status::StatusCode::Ok as i32,
            },
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_an_export_request_that_decodes_back() {
        let body = export_request(
            &[("service.name", Value::Str("troupe".into()))],
            &[Span {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent: None,
                name: "workflow wf-1".into(),
                start_ms: 1,
                end_ms: 2,
                attributes: vec![("troupe.attempt", Value::Int(3))],
                error: None,
            }],
        );
        // Field 1 (resource_spans), length-delimited, then the whole rest.
        assert_eq!(body[0], 0x0a);
        let w = b"workflow wf-1";
        assert!(body.windows(w.len()).any(|x| x == w));
        assert!(body.windows(16).any(|x| x == [1; 16]));
        // start_time_unix_nano: field 7, fixed64, 1 ms in ns.
        let mut start = vec![0x39];
        start.extend_from_slice(&1_000_000u64.to_le_bytes());
        assert!(body.windows(9).any(|x| x == start.as_slice()));
        let back = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let sp = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(sp.name, "workflow wf-1");
        assert_eq!(sp.end_time_unix_nano, 2_000_000);
    }
}
