//! Benchmarks for the consumer-agent's hot path: HTTP request parse + form decode for the
//! race's request (512-character parameter), and agent frame encode + decode.

use std::hint::black_box;

use codec::agent::{self, begin_request, begin_response, finish, Frame, RequestHead, Status};
use codec::form::race_call;
use codec::http::{write_response_int, RequestDecoder};
use codec::Decoded;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn race_request(param_len: usize) -> Vec<u8> {
    let param: String = (0..param_len)
        .map(|i| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[i * 7 % 62],
            )
        })
        .collect();
    let body = format!(
        "interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method=hash\
         &parameterTypesString=Ljava%2Flang%2FString%3B&parameter={param}"
    );
    let mut req = format!(
        "POST /invoke HTTP/1.1\r\nHost: 127.0.0.1:20000\r\nUser-Agent: wrk\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

fn http(c: &mut Criterion) {
    let req = race_request(512);
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("parse_race_request_and_form_512", |b| {
        let mut dec = RequestDecoder::new();
        b.iter(|| {
            let Ok(Decoded::Complete { msg, consumed }) = dec.decode(black_box(&req)) else {
                unreachable!("valid request")
            };
            let call = race_call(&msg.body).ok();
            black_box((call.map(|c| c.parameter.map(|p| p.len())), consumed))
        })
    });
    let mut out = Vec::with_capacity(256);
    g.throughput(Throughput::Elements(1));
    g.bench_function("write_int_response", |b| {
        b.iter(|| {
            out.clear();
            write_response_int(&mut out, 200, black_box(-1_592_106_735), true);
            black_box(out.len())
        })
    });
    g.finish();
}

fn agent_frames(c: &mut Criterion) {
    // A hessian2 string of 512 characters is about 515 bytes.
    let args = vec![b'x'; 515];
    let result = [0xd4u8, 0x12, 0x34];
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("agent");
    g.throughput(Throughput::Bytes(
        (agent::HEADER_LEN + 10 + args.len()) as u64,
    ));
    g.bench_function("request_encode_decode_512", |b| {
        let mut id = 0u64;
        b.iter(|| {
            out.clear();
            id += 1;
            let Ok(mark) = begin_request(&mut out, &RequestHead::new(id, 0)) else {
                unreachable!()
            };
            out.extend_from_slice(black_box(&args));
            let _ = finish(&mut out, mark);
            match agent::decode(black_box(&out)) {
                Ok(Decoded::Complete {
                    msg: Frame::Request(r),
                    consumed,
                }) => black_box((r.args.len(), consumed)),
                _ => unreachable!("valid frame"),
            }
        })
    });
    g.throughput(Throughput::Bytes((agent::HEADER_LEN + result.len()) as u64));
    g.bench_function("response_encode_decode", |b| {
        let mut id = 0u64;
        b.iter(|| {
            out.clear();
            id += 1;
            let mark = begin_response(&mut out, id, Status::Ok);
            out.extend_from_slice(black_box(&result));
            let _ = finish(&mut out, mark);
            match agent::decode(black_box(&out)) {
                Ok(Decoded::Complete {
                    msg: Frame::Response(r),
                    consumed,
                }) => black_box((r.payload.len(), consumed)),
                _ => unreachable!("valid frame"),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, http, agent_frames);
criterion_main!(benches);
