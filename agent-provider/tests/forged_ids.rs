//! A provider that sends forged and repeated response ids: every call still gets exactly
//! its own answer, once, and nothing else reaches the agent client.
//!
//! The provider below answers each request with three frames: first a forged response
//! whose id names the same slot one generation later (the id the provider-agent's next
//! call in that slot would get), then the real answer, and with the next request, a
//! repeat of the previous answer carrying another value. A provider-agent matching by
//! slot alone would hand the forgery or the repeat to a later call.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use codec::agent::{self, Frame, Status};
use codec::dubbo::{self, Reply, Serialization};
use codec::hessian2::Value;
use codec::java::string_hash_code;
use codec::Decoded;
use common::*;
use test_support::wait::assert_eventually;

/// Serves one connection at a time, forging and repeating response ids.
fn forging_provider() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve_forging(stream));
        }
    });
    addr
}

fn answer(out: &mut Vec<u8>, id: i64, value: i32) {
    let v = Value::Int(value);
    dubbo::encode_response(
        out,
        id,
        Serialization::Hessian2,
        dubbo::status::OK,
        &Reply::Value(&v),
        &[],
    )
    .unwrap();
}

fn serve_forging(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut previous: Option<i64> = None;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Ok(Decoded::Complete { msg, consumed }) = dubbo::decode_frame(&buf) {
            let id = msg.id();
            if msg.is_event() {
                if msg.is_request() && msg.is_two_way() {
                    dubbo::encode_heartbeat_reply(&mut out, id);
                }
            } else {
                let body = dubbo::decode_request_body(msg.serialization_id(), msg.body).unwrap();
                let s = body.args.first().and_then(Value::as_str).unwrap_or("");
                if let Some(prev) = previous {
                    answer(&mut out, prev, -2); // a late repeat of the last answer
                }
                answer(&mut out, id.wrapping_add(1 << 32), -1); // the slot's next generation
                answer(&mut out, id + 7, -3); // a slot nobody uses
                answer(&mut out, id, string_hash_code(s));
                previous = Some(id);
            }
            buf.drain(..consumed);
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Reads the next agent frame: a response, or `None` for a PONG with `pong_id`.
fn next_frame(c: &mut Client, buf: &mut Vec<u8>, pong_id: u64) -> Option<(u64, Status, i32)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Decoded::Complete { msg, consumed } = agent::decode(buf).unwrap() {
            let got = match msg {
                Frame::Response(r) => {
                    let v = match codec::hessian2::decode(r.payload) {
                        Ok(Decoded::Complete {
                            msg: Value::Int(i), ..
                        }) => i,
                        other => panic!("response {} is not an int: {other:?}", r.id),
                    };
                    Some((r.id, r.status, v))
                }
                Frame::Pong { id } => {
                    assert_eq!(id, pong_id);
                    None
                }
                other => panic!("unexpected frame {other:?}"),
            };
            buf.drain(..consumed);
            return got;
        }
        let n = c.stream.read(&mut chunk).expect("read from the agent");
        assert!(n > 0, "the agent closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn forged_and_repeated_response_ids_never_answer_another_call() {
    init_log();
    let provider = forging_provider();
    let agent = agent_provider::start(agent_config(
        provider,
        agent_provider::config::SerializationArg::Hessian2,
    ))
    .unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());

    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let mut buf = Vec::new();
    // One at a time: each call reuses the slot the last one freed.
    for i in 0..30u64 {
        let s = format!("call {i}");
        c.send_hash(i, &s, 5000);
        assert_eq!(
            next_frame(&mut c, &mut buf, 0),
            Some((i, Status::Ok, string_hash_code(&s)))
        );
    }
    // Pipelined: answers in any order, each one exactly once.
    let mut pending: std::collections::HashMap<u64, i32> = (100..140u64)
        .map(|i| (i, string_hash_code(&format!("pipelined {i}"))))
        .collect();
    for i in 100..140u64 {
        c.send_hash(i, &format!("pipelined {i}"), 5000);
    }
    while !pending.is_empty() {
        let (id, status, v) = next_frame(&mut c, &mut buf, 0).expect("a response");
        assert_eq!(status, Status::Ok);
        assert_eq!(pending.remove(&id), Some(v), "answer to call {id}");
    }
    // Nothing else is on its way: the next frame is the PONG to this PING.
    let mut ping = Vec::new();
    agent::encode_ping(&mut ping, 4242);
    c.stream.write_all(&ping).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(next_frame(&mut c, &mut buf, 4242), None);
    assert_eq!(agent.metrics().inflight(), 0);
    agent.stop();
}
