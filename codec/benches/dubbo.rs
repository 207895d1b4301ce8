//! Dubbo codec throughput on the race's request (`hash` with a 512-character
//! parameter): request encode for hessian2 and fastjson, what a consumer-agent reads of
//! a Dubbo caller's request, response decode, and the
//! provider-agent's turning of a provider's answer (with Java 2.7's `dubbo`
//! attachment) into the agent RESPONSE.

use codec::dubbo::{self, status, Attachments, Reply, Request, Serialization};
use codec::hessian2::{self, Value};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

fn request<'a>(ser: Serialization, args: &'a [u8]) -> Request<'a> {
    Request {
        id: 1,
        serialization: ser,
        two_way: true,
        dubbo_version: "2.0.1",
        path: SERVICE,
        version: None,
        group: None,
        method: "hash",
        descriptor: "Ljava/lang/String;",
        args,
        attachments: Attachments::Exactly(&[("path", Some(SERVICE))]),
    }
}

fn bench(c: &mut Criterion) {
    let param: String = (0..512)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut args = Vec::new();
    hessian2::write_string(&mut args, &param);

    let mut g = c.benchmark_group("dubbo");
    for (name, ser) in [
        ("encode_request_hessian2", Serialization::Hessian2),
        ("encode_request_fastjson", Serialization::Fastjson),
    ] {
        let req = request(ser, &args);
        let mut out = Vec::with_capacity(1024);
        let _ = dubbo::encode_request(&mut out, &req);
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let _ = dubbo::encode_request(&mut out, black_box(&req));
                black_box(out.len())
            })
        });
    }

    // What the consumer-agent reads of a Dubbo caller's request: names, attachments,
    // and where the arguments end (walked, not decoded).
    let mut wire = Vec::new();
    let _ = dubbo::encode_request(&mut wire, &request(Serialization::Hessian2, &args));
    let body = wire.get(16..).unwrap_or_default();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("route_request_hessian2", |b| {
        b.iter(|| black_box(dubbo::decode_routed_request(black_box(body)).is_ok()))
    });

    for (name, ser) in [
        ("decode_response_hessian2", Serialization::Hessian2),
        ("decode_response_fastjson", Serialization::Fastjson),
    ] {
        let mut frame = Vec::new();
        let v = Value::Int(codec::java::string_hash_code(&param));
        let _ = dubbo::encode_response(&mut frame, 1, ser, status::OK, &Reply::Value(&v), &[]);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                if let Ok(codec::Decoded::Complete { msg, .. }) =
                    dubbo::decode_frame(black_box(&frame))
                {
                    black_box(
                        dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
                            .ok(),
                    );
                }
            })
        });
    }
    for (name, ser) in [
        ("answer_to_agent_hessian2", Serialization::Hessian2),
        ("answer_to_agent_fastjson", Serialization::Fastjson),
    ] {
        let mut wire = Vec::new();
        let v = Value::Int(codec::java::string_hash_code(&param));
        let atts = [("dubbo", "2.0.2")];
        let _ = dubbo::encode_response(&mut wire, 1, ser, status::OK, &Reply::Value(&v), &atts);
        let Ok(codec::Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(&wire) else {
            panic!("the answer frame does not decode")
        };
        let mut out = Vec::with_capacity(256);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(codec::agent::encode_dubbo_answer(
                    &mut out,
                    1,
                    black_box(&frame),
                    false,
                ));
                black_box(out.len())
            })
        });
    }

    let mut out = Vec::with_capacity(1100);
    g.throughput(Throughput::Bytes(param.len() as u64));
    g.bench_function("json_write_str", |b| {
        b.iter(|| {
            out.clear();
            codec::json::write_str(&mut out, black_box(&param));
            black_box(out.len())
        })
    });
    g.bench_function("json_write_str_serde_json", |b| {
        b.iter(|| {
            out.clear();
            let _ = serde_json::to_writer(&mut out, black_box(&param));
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
