//! Steady-state hot paths allocate nothing: HTTP decode + form fields, agent encode into
//! a buffer with capacity, agent decode (attachments included), response writing.

use codec::agent::{self, begin_request, begin_response_with, finish, Frame, RequestHead, Status};
use codec::form::race_call_in;
use codec::http::{write_response_int, RequestDecoder};
use codec::Decoded;
use test_support::alloc::{allocations_during, Counting};

/// Counts per thread: tests run side by side, each counts its own.
#[global_allocator]
static GLOBAL: Counting = Counting::per_thread();

#[test]
fn http_and_form_decode_allocate_nothing() {
    // Escaped as the race's clients send it: decoding goes into a reused scratch buffer.
    let body = "interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method=hash\
                &parameterTypesString=Ljava%2Flang%2FString%3B&parameter=abcdefghij%2C+0123456789";
    let req = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut dec = RequestDecoder::new();
    let mut out = Vec::with_capacity(1024);
    let mut scratch = Vec::with_capacity(1024);
    let (n, len) = allocations_during(|| {
        let Ok(Decoded::Complete { msg, .. }) = dec.decode(req.as_bytes()) else {
            return None;
        };
        let call = race_call_in(&msg.body, &mut scratch).ok()?;
        write_response_int(&mut out, 200, -1_592_106_735, msg.keep_alive);
        call.parameter.map(|p| p.len())
    });
    assert_eq!(len, Some(22));
    assert_eq!(n, 0, "allocations on the HTTP hot path");
}

#[test]
fn agent_encode_decode_allocate_nothing() {
    let mut out = Vec::with_capacity(4096);
    let att = [("k", "v")];
    let (n, ok) = allocations_during(|| {
        for id in 0..10 {
            let head = RequestHead {
                attachments: &att,
                ..RequestHead::new(id, 3)
            };
            let Ok(mark) = begin_request(&mut out, &head) else {
                return false;
            };
            out.extend_from_slice(b"\x05hello");
            if finish(&mut out, mark).is_err() {
                return false;
            }
        }
        let mut at = 0;
        let mut seen = 0;
        while let Ok(Decoded::Complete {
            msg: Frame::Request(r),
            consumed,
        }) = agent::decode(&out[at..])
        {
            seen += r.attachments.filter(|&(k, v)| k == "k" && v == "v").count();
            at += consumed;
        }
        seen == 10 && at == out.len()
    });
    assert!(ok);
    assert_eq!(n, 0, "allocations on the agent hot path");
}

#[test]
fn agent_responses_allocate_nothing_with_or_without_attachments() {
    let mut out = Vec::with_capacity(4096);
    let (n, ok) = allocations_during(|| {
        for id in 0..10u64 {
            let att: &[(&str, &str)] = if id % 2 == 0 { &[] } else { &[("k", "v")] };
            let Ok(mark) = begin_response_with(&mut out, id, Status::Ok, att) else {
                return false;
            };
            out.push(0x91);
            if finish(&mut out, mark).is_err() {
                return false;
            }
        }
        let (mut at, mut seen) = (0, 0);
        while let Ok(Decoded::Complete {
            msg: Frame::Response(r),
            consumed,
        }) = agent::decode(&out[at..])
        {
            seen += r.attachments.filter(|&(k, v)| k == "k" && v == "v").count();
            seen += usize::from(r.payload == [0x91]);
            at += consumed;
        }
        seen == 15 && at == out.len()
    });
    assert!(ok);
    assert_eq!(n, 0, "allocations on the agent response path");
}
