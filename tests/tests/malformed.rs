//! Malformed request bodies on every RPC of every `tuna.v1` service: a real server process
//! answers each with a client-error status (a body that is not the method's protobuf is
//! INVALID_ARGUMENT, never INTERNAL), nothing crashes or hangs, and the server is healthy
//! afterwards.
//!
//! The methods come from the API's own descriptor set, so a new RPC is covered without
//! anyone listing it. Bodies travel through a pass-through codec, so they reach the server's
//! decoder byte for byte; a streaming RPC gets one malformed message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tuna_e2e::ServerProcess;

const BODIES_PER_RPC: usize = 1000;
/// Calls in flight at once (over one HTTP/2 connection).
const CONCURRENCY: usize = 48;
/// Longer than any single call may take: the server's unary deadline is 30 s.
const CALL_LIMIT: Duration = Duration::from_secs(45);
/// Codes that mean the server failed rather than refused: a crash or panic (the stream is
/// reset: UNKNOWN / INTERNAL / CANCELLED / UNAVAILABLE), a hang, or a method not served.
const SERVER_FAULTS: &[Code] = &[
    Code::Internal,
    Code::Unknown,
    Code::Cancelled,
    Code::Unavailable,
    Code::DataLoss,
    Code::DeadlineExceeded,
    Code::Unimplemented,
];
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// Bytes in, bytes out: the body is sent exactly as generated and the answer kept raw.
#[derive(Clone, Copy)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One RPC of the API.
#[derive(Clone)]
struct Rpc {
    path: String,
    client_streaming: bool,
    server_streaming: bool,
    input: MessageDescriptor,
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(tuna_proto::v1::FILE_DESCRIPTOR_SET).unwrap()
}

/// Every method of every `tuna.v1` service, from the descriptor set.
fn rpcs(pool: &DescriptorPool) -> Vec<Rpc> {
    let mut out = Vec::new();
    for service in pool.services().filter(|s| s.package_name() == "tuna.v1") {
        for m in service.methods() {
            out.push(Rpc {
                path: format!("/{}/{}", service.full_name(), m.name()),
                client_streaming: m.is_client_streaming(),
                server_streaming: m.is_server_streaming(),
                input: m.input(),
            });
        }
    }
    out
}

/// SplitMix64: deterministic, so a failure reproduces from the printed body index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Fewer than `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn wire_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => FIXED64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => FIXED32,
        Kind::String | Kind::Bytes | Kind::Message(_) => LEN,
        _ => VARINT,
    }
}

/// A well-formed encoding of `desc` with random field values (ids, numbers, nested messages
/// and map entries alike), so a cut or a patch of it looks like a real request gone wrong.
fn valid(rng: &mut Rng, desc: &MessageDescriptor, depth: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for field in desc.fields() {
        if !rng.chance(70) {
            continue;
        }
        let times = if field.is_list() || field.is_map() {
            1 + rng.below(3)
        } else {
            1
        };
        for _ in 0..times {
            let kind = field.kind();
            tag(&mut buf, field.number(), wire_type(&kind));
            match &kind {
                Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => {
                    buf.extend_from_slice(&rng.bytes(8));
                }
                Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => {
                    buf.extend_from_slice(&rng.bytes(4));
                }
                Kind::String => {
                    let prefixes = ["", "job_", "file_", "sweep_", "wrk_", "art_", "tiny"];
                    let mut s = prefixes[rng.below(prefixes.len())].to_string();
                    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789_-./ ";
                    for _ in 0..rng.below(24) {
                        s.push(alphabet[rng.below(alphabet.len())] as char);
                    }
                    varint(&mut buf, s.len() as u64);
                    buf.extend_from_slice(s.as_bytes());
                }
                Kind::Bytes => {
                    let b = rng.some_bytes(32);
                    varint(&mut buf, b.len() as u64);
                    buf.extend_from_slice(&b);
                }
                Kind::Message(inner) => {
                    let b = if depth < 4 {
                        valid(rng, inner, depth + 1)
                    } else {
                        Vec::new()
                    };
                    varint(&mut buf, b.len() as u64);
                    buf.extend_from_slice(&b);
                }
                Kind::Bool => varint(&mut buf, rng.next() % 2),
                Kind::Enum(_) => varint(&mut buf, rng.next() % 6),
                _ => {
                    let v = if rng.chance(50) {
                        rng.next() % 100
                    } else {
                        rng.next()
                    };
                    varint(&mut buf, v);
                }
            }
        }
    }
    buf
}

/// A field number of `desc` (or an unknown one when it has none).
fn some_field(rng: &mut Rng, desc: &MessageDescriptor) -> (u32, Option<Kind>) {
    let fields: Vec<_> = desc.fields().collect();
    if fields.is_empty() || rng.chance(10) {
        return (1 + rng.below(2000) as u32, None);
    }
    let f = &fields[rng.below(fields.len())];
    (f.number(), Some(f.kind()))
}

/// One malformed body of the kind `i % 6`, and the kind's name.
fn malformed(rng: &mut Rng, desc: &MessageDescriptor, i: usize) -> (Bytes, &'static str) {
    let mut buf = Vec::new();
    let what = match i % 6 {
        0 => {
            let n = if rng.chance(90) {
                rng.below(64)
            } else {
                rng.below(8192)
            };
            buf = rng.bytes(n);
            "random bytes"
        }
        1 => {
            let whole = valid(rng, desc, 0);
            if whole.is_empty() {
                buf = rng.some_bytes(8);
                buf.push(0xff);
            } else {
                buf = whole[..rng.below(whole.len())].to_vec();
                // Half of them also lose a byte in the middle, shifting every later tag.
                if buf.len() > 2 && rng.chance(50) {
                    let at = rng.below(buf.len());
                    buf.remove(at);
                }
            }
            "truncated valid message"
        }
        2 => {
            buf = valid(rng, desc, 0);
            let (field, _) = some_field(rng, desc);
            tag(&mut buf, field, LEN);
            let huge = [
                u64::MAX,
                1 << 63,
                u64::from(u32::MAX),
                1 << 31,
                4 << 20,
                (64 << 20) + 1,
                1 + rng.below(1000) as u64,
            ];
            varint(&mut buf, huge[rng.below(huge.len())]);
            if rng.chance(20) {
                // An over-long varint: eleven continuation bytes.
                buf.extend_from_slice(&[0xff; 11]);
            }
            buf.extend_from_slice(&rng.some_bytes(16));
            "huge length prefix"
        }
        3 => {
            buf = valid(rng, desc, 0);
            let (field, kind) = some_field(rng, desc);
            let right = kind.as_ref().map(wire_type);
            let wrong: Vec<u8> = [VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32, 6, 7]
                .into_iter()
                .filter(|w| Some(*w) != right)
                .collect();
            let wire = wrong[rng.below(wrong.len())];
            tag(&mut buf, field, wire);
            match wire {
                VARINT => varint(&mut buf, rng.next()),
                FIXED64 => buf.extend_from_slice(&rng.bytes(8)),
                FIXED32 => buf.extend_from_slice(&rng.bytes(4)),
                LEN => {
                    let b = rng.some_bytes(16);
                    varint(&mut buf, b.len() as u64);
                    buf.extend_from_slice(&b);
                }
                _ => buf.extend_from_slice(&rng.some_bytes(4)),
            }
            if rng.chance(50) {
                buf.extend_from_slice(&valid(rng, desc, 0));
            }
            "wrong wire type"
        }
        4 => {
            let depth = 50 + rng.below(400);
            if rng.chance(50) {
                // Nested groups: the decoder recurses into each to skip it.
                let field = 1 + rng.below(30) as u32;
                for _ in 0..depth {
                    tag(&mut buf, field, START_GROUP);
                }
                buf.extend_from_slice(&rng.some_bytes(8));
                let close = if rng.chance(50) {
                    depth
                } else {
                    rng.below(depth)
                };
                for _ in 0..close {
                    tag(&mut buf, field, END_GROUP);
                }
            } else {
                // Length-delimited nesting, through the message's own message fields as far
                // as they go, then through unknown fields.
                let mut path = Vec::new();
                let mut at = Some(desc.clone());
                for _ in 0..depth {
                    let next = at.as_ref().and_then(|d| {
                        let msgs: Vec<_> = d
                            .fields()
                            .filter(|f| matches!(f.kind(), Kind::Message(_)))
                            .collect();
                        (!msgs.is_empty()).then(|| msgs[rng.below(msgs.len())].clone())
                    });
                    match next {
                        Some(f) => {
                            path.push(f.number());
                            at = match f.kind() {
                                Kind::Message(m) => Some(m),
                                _ => None,
                            };
                        }
                        None => {
                            path.push(1 + rng.below(30) as u32);
                            at = None;
                        }
                    }
                }
                let mut inner = rng.some_bytes(16);
                for field in path.into_iter().rev() {
                    let mut outer = Vec::with_capacity(inner.len() + 8);
                    tag(&mut outer, field, LEN);
                    varint(&mut outer, inner.len() as u64);
                    outer.extend_from_slice(&inner);
                    inner = outer;
                }
                buf = inner;
            }
            "deeply nested garbage"
        }
        _ => {
            // Well-formed wire format whose strings are not UTF-8, or a varint that never ends.
            buf = valid(rng, desc, 0);
            let strings: Vec<_> = desc
                .fields()
                .filter(|f| matches!(f.kind(), Kind::String))
                .collect();
            if strings.is_empty() || rng.chance(30) {
                let (field, _) = some_field(rng, desc);
                tag(&mut buf, field, VARINT);
                buf.extend_from_slice(&[0x80; 12]);
            } else {
                let f = &strings[rng.below(strings.len())];
                tag(&mut buf, f.number(), LEN);
                let bad: &[u8] = [
                    &b"\xff\xfe"[..],
                    b"a\xc3(",
                    b"\xed\xa0\x80",
                    b"\xf8\x88\x80\x80\x80",
                ][rng.below(4)];
                varint(&mut buf, bad.len() as u64);
                buf.extend_from_slice(bad);
            }
            "invalid UTF-8 or unterminated varint"
        }
    };
    (Bytes::from(buf), what)
}

/// Sends `body` as the one request message of `rpc` and returns how the call ended (OK with
/// an empty message when it succeeded); a server stream is read to its end.
async fn call(channel: Channel, rpc: &Rpc, body: Bytes) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(format!("channel not ready: {e}"));
    }
    let path = PathAndQuery::try_from(rpc.path.clone()).unwrap();
    let ok = || Status::new(Code::Ok, "");
    match (rpc.client_streaming, rpc.server_streaming) {
        (false, false) => match grpc.unary(Request::new(body), path, RawCodec).await {
            Ok(_) => ok(),
            Err(s) => s,
        },
        (true, false) => {
            let once = futures::stream::once(async move { body });
            match grpc
                .client_streaming(Request::new(once), path, RawCodec)
                .await
            {
                Ok(_) => ok(),
                Err(s) => s,
            }
        }
        (streaming_in, true) => {
            let response = if streaming_in {
                let once = futures::stream::once(async move { body });
                grpc.streaming(Request::new(once), path, RawCodec).await
            } else {
                grpc.server_streaming(Request::new(body), path, RawCodec)
                    .await
            };
            let mut stream = match response {
                Ok(r) => r.into_inner(),
                Err(s) => return s,
            };
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return ok(),
                    Err(s) => return s,
                }
            }
        }
    }
}

/// Whether the process is running (not exited, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_bodies_per_rpc_leave_the_server_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let pool = pool();
    let rpcs = rpcs(&pool);
    let services: std::collections::BTreeSet<&str> = rpcs
        .iter()
        .filter_map(|r| r.path.split('/').nth(1))
        .collect();
    assert!(
        rpcs.len() >= 30 && services.len() >= 7,
        "expected every tuna.v1 RPC, found {} in {services:?}",
        rpcs.len()
    );
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let started = Instant::now();
    let mut jobs = Vec::with_capacity(rpcs.len() * BODIES_PER_RPC);
    for (n, rpc) in rpcs.iter().enumerate() {
        let mut rng = Rng(0x7475_6e61_0000 + n as u64);
        for i in 0..BODIES_PER_RPC {
            let (body, what) = malformed(&mut rng, &rpc.input, i);
            jobs.push((rpc.clone(), i, what, body));
        }
    }
    let results: Vec<(Rpc, usize, &str, Bytes, Status)> = futures::stream::iter(jobs)
        .map(|(rpc, i, what, body)| {
            let channel = channel.clone();
            async move {
                let status =
                    match tokio::time::timeout(CALL_LIMIT, call(channel, &rpc, body.clone())).await
                    {
                        Ok(s) => s,
                        Err(_) => {
                            Status::deadline_exceeded("the test gave up waiting: the call hung")
                        }
                    };
                (rpc, i, what, body, status)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();

    // Per RPC: how many answers of each code, and how many were decode errors.
    let mut codes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut decode_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut faults = Vec::new();
    for (rpc, i, what, body, status) in &results {
        *codes
            .entry(rpc.path.clone())
            .or_default()
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        if status.message().contains(DECODE_ERROR) {
            *decode_errors.entry(rpc.path.clone()).or_default() += 1;
            if status.code() != Code::InvalidArgument {
                faults.push(format!(
                    "{} body #{i} ({what}): an undecodable body answered {:?}, not \
                     InvalidArgument: {}",
                    rpc.path,
                    status.code(),
                    status.message()
                ));
            }
        }
        if SERVER_FAULTS.contains(&status.code()) {
            faults.push(format!(
                "{} body #{i} ({what}, {} bytes {:02x?}): {:?} {}",
                rpc.path,
                body.len(),
                &body[..body.len().min(48)],
                status.code(),
                status.message()
            ));
        }
    }
    println!(
        "{} bodies to {} RPCs in {:.1} s",
        results.len(),
        rpcs.len(),
        elapsed.as_secs_f64()
    );
    for (path, by_code) in &codes {
        println!(
            "{path}: {by_code:?}, decode errors {}",
            decode_errors.get(path).copied().unwrap_or(0)
        );
    }
    assert!(
        faults.is_empty(),
        "{} calls ended in a server fault; first ones:\n{}\nserver log tail:\n{}",
        faults.len(),
        faults
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&server.log_text())
    );
    // Every method's decoder was exercised (the bodies are not all accidentally valid).
    for rpc in &rpcs {
        assert!(
            decode_errors.get(&rpc.path).copied().unwrap_or(0) > 0,
            "{}: no body failed to decode",
            rpc.path
        );
    }

    // Afterwards: the process is alive, healthy, and serves a real call.
    assert!(alive(server.pid()), "the server process died");
    let log = server.log_text();
    assert!(
        !log.contains("panicked"),
        "the server panicked:\n{}",
        tail(&log)
    );
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "tuna.v1.JobService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            ServingStatus::try_from(reply.status),
            Ok(ServingStatus::Serving),
            "health of {service:?}"
        );
    }
    let out = server.cli(&["jobs", "list"]);
    assert!(
        out.status.success(),
        "tuna jobs list failed after the malformed bodies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(alive(server.pid()), "the server process died");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
