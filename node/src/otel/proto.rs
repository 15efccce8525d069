//! The few OTLP messages Troupe sends, encoded by hand: `ExportTraceServiceRequest` with one
//! resource, one scope and its spans (opentelemetry-proto `trace/v1`, field numbers from
//! `opentelemetry/proto/trace/v1/trace.proto`). Ten fields do not justify the SDK's build on
//! small machines; the format is stable (OTLP 1.x).

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
}

#[derive(Default)]
struct Buf(Vec<u8>);

impl Buf {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Buf)) {
        let mut inner = Buf::default();
        f(&mut inner);
        self.bytes(field, &inner.0);
    }
}

fn key_value(b: &mut Buf, field: u32, key: &str, v: &Value) {
    b.message(field, |kv| {
        kv.bytes(1, key.as_bytes());
        kv.message(2, |any| match v {
            Value::Str(s) => any.bytes(1, s.as_bytes()),
            Value::Int(i) => any.uint(3, *i as u64),
        });
    });
}

const NS_PER_MS: u64 = 1_000_000;
const SPAN_KIND_INTERNAL: u64 = 1;
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;

/// The body of `POST /v1/traces` (`application/x-protobuf`).
pub fn export_request(resource: &[(&'static str, Value)], spans: &[Span]) -> Vec<u8> {
    let mut req = Buf::default();
    req.message(1, |rs| {
        rs.message(1, |r| {
            for (k, v) in resource {
                key_value(r, 1, k, v);
            }
        });
        rs.message(2, |ss| {
            ss.message(1, |scope| {
                scope.bytes(1, b"troupe");
                scope.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                ss.message(2, |sp| span(sp, s));
            }
        });
    });
    req.0
}

fn span(b: &mut Buf, s: &Span) {
    b.bytes(1, &s.trace_id);
    b.bytes(2, &s.span_id);
    if let Some(p) = &s.parent {
        b.bytes(4, p);
    }
    b.bytes(5, s.name.as_bytes());
    b.uint(6, SPAN_KIND_INTERNAL);
    b.fixed64(7, s.start_ms.saturating_mul(NS_PER_MS));
    b.fixed64(8, s.end_ms.max(s.start_ms).saturating_mul(NS_PER_MS));
    for (k, v) in &s.attributes {
        key_value(b, 9, k, v);
    }
    b.message(15, |st| match &s.error {
        Some(m) => {
            st.bytes(2, m.as_bytes());
            st.uint(3, STATUS_ERROR);
        }
        None => st.uint(3, STATUS_OK),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_varints_and_nested_lengths() {
        let mut b = Buf::default();
        b.varint(300);
        assert_eq!(b.0, [0xac, 0x02]);
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
    }
}
