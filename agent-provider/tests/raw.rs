//! RAW answers: a consumer-agent taking Dubbo itself asks for the provider's Dubbo
//! response as the provider wrote it; the provider-agent relays its body byte for byte
//! under the agent status a consumer-agent retries or counts by.

mod common;

use std::io::Write;
use std::time::Duration;

use codec::agent::{self, RawDubbo, RequestHead, Status};
use codec::dubbo::{self, Serialization};
use codec::hessian2;
use codec::Decoded;
use common::*;

use agent_provider::config::SerializationArg;

/// A raw RESPONSE: (agent status, Dubbo header fields, Dubbo body).
fn raw_call(c: &mut Client, id: u64) -> (Status, Option<RawDubbo>, Vec<u8>) {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "hello");
    let head = RequestHead {
        raw_result: true,
        timeout_ms: 5000,
        ..RequestHead::new(id, 1)
    };
    let mut out = Vec::new();
    let mark = agent::begin_request(&mut out, &head).unwrap();
    out.extend_from_slice(&args);
    agent::finish(&mut out, mark).unwrap();
    c.stream.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Ok(Decoded::Complete {
            msg: agent::Frame::Response(r),
            ..
        }) = agent::decode(&buf)
        {
            assert_eq!(r.id, id);
            return (r.status, r.raw, r.payload.to_vec());
        }
        let n = std::io::Read::read(&mut c.stream, &mut chunk).expect("read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_providers_answer_is_relayed_byte_for_byte() {
    let (provider, agent) = provider_and_agent(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();

    // A value: flag 1 and the int, as the provider wrote them.
    let (status, raw, body) = raw_call(&mut c, 1);
    assert_eq!(status, Status::Ok);
    assert_eq!(
        raw,
        Some(RawDubbo {
            status: dubbo::status::OK,
            serialization: dubbo::SERIALIZATION_HESSIAN2
        })
    );
    let mut want = Vec::new();
    hessian2::write_int(&mut want, 1);
    hessian2::write_int(&mut want, 99162322);
    assert_eq!(body, want);
    assert!(
        !provider.received.lock().unwrap().is_empty(),
        "the provider got it"
    );

    // An exception: the provider's own exception object, not a summary of it.
    provider.set(Mode::Exception("boom".into()), Duration::ZERO);
    let (status, raw, body) = raw_call(&mut c, 2);
    assert_eq!(
        status,
        Status::Exception,
        "counted as the service's exception"
    );
    assert_eq!(raw.map(|r| r.status), Some(dubbo::status::OK));
    let mut want = Vec::new();
    dubbo::encode_response(
        &mut want,
        0,
        Serialization::Hessian2,
        dubbo::status::OK,
        &dubbo::Reply::Exception("boom"),
        &[],
    )
    .unwrap();
    assert_eq!(
        body,
        want[dubbo::HEADER_LEN..],
        "the Java-shaped exception as written"
    );

    // An error status: relayed, read as the agent status a consumer-agent acts on.
    provider.set(
        Mode::Status(dubbo::status::SERVER_THREADPOOL_EXHAUSTED, "full".into()),
        Duration::ZERO,
    );
    let (status, raw, body) = raw_call(&mut c, 3);
    assert_eq!(status, Status::Overloaded, "retried elsewhere");
    assert_eq!(
        raw.map(|r| r.status),
        Some(dubbo::status::SERVER_THREADPOOL_EXHAUSTED)
    );
    let mut want = Vec::new();
    hessian2::write_string(&mut want, "full");
    assert_eq!(body, want);
    agent.stop();
}

#[test]
fn a_fastjson_provider_answers_as_without_raw() {
    let (_provider, agent) =
        provider_and_agent(Serialization::Fastjson, SerializationArg::Fastjson);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let (status, raw, body) = raw_call(&mut c, 1);
    assert_eq!((status, raw), (Status::Ok, None));
    let mut want = Vec::new();
    hessian2::write_int(&mut want, 99162322);
    assert_eq!(
        body, want,
        "the value as hessian2, as for any consumer-agent"
    );
    agent.stop();
}
