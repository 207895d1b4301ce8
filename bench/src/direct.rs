//! Calling a mock provider directly, over Dubbo, with no mesh in between: the baseline
//! the overhead scenario subtracts to report the latency the two agents add.
//!
//! One connection, one call at a time (the overhead scenario's single-connection step),
//! each answer checked against Java's hashCode like the load generator's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use codec::dubbo::{self, Attachments, Outcome, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;

use crate::hist::Histogram;

/// The race's service, as the provider-agents call it.
const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

/// What a direct run measured.
#[derive(Debug, Clone)]
pub struct DirectReport {
    /// Latency of the calls after the warm-up, µs.
    pub latency: Histogram,
    /// Calls answered with the wrong value or an error.
    pub wrong: u64,
}

/// Calls `hash(String)` on the provider at `addr` over one connection, one call at a
/// time, for `warmup` (not recorded) and then `duration`.
pub fn ping_pong(
    addr: SocketAddr,
    serialization: Serialization,
    warmup: Duration,
    duration: Duration,
) -> io::Result<DirectReport> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut report = DirectReport {
        latency: Histogram::new(),
        wrong: 0,
    };
    let (mut out, mut args, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    let (record_from, end) = (start + warmup, start + warmup + duration);
    let mut id = 0i64;
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(report);
        }
        id += 1;
        let param = format!("direct-{id}");
        args.clear();
        hessian2::write_string(&mut args, &param);
        out.clear();
        let req = Request {
            id,
            serialization,
            two_way: true,
            dubbo_version: "2.0.2",
            path: SERVICE,
            version: None,
            group: None,
            method: "hash",
            descriptor: "Ljava/lang/String;",
            args: &args,
            attachments: Attachments::Standard(&[]),
        };
        dubbo::encode_request(&mut out, &req).map_err(io::Error::other)?;
        s.write_all(&out)?;
        let right = read_answer(&mut s, &mut buf, id)? == Some(string_hash_code(&param));
        if sent >= record_from {
            report.latency.record(sent.elapsed().as_micros() as u64);
            report.wrong += u64::from(!right);
        }
    }
}

/// Reads frames until the response to `id`; its int value, or `None` for anything else.
fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, id: i64) -> io::Result<Option<i32>> {
    let mut chunk = [0u8; 4096];
    loop {
        match dubbo::decode_frame(buf) {
            Ok(Decoded::Complete { msg, consumed }) => {
                let answer = (msg.id() == id && !msg.is_event()).then(|| {
                    dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
                });
                buf.drain(..consumed);
                match answer {
                    None => continue, // a heartbeat, or a stray frame
                    Some(Ok(r)) => {
                        return Ok(match r.outcome {
                            Outcome::Value(Value::Int(v)) => Some(v),
                            Outcome::Value(Value::Long(v)) => i32::try_from(v).ok(),
                            _ => None,
                        })
                    }
                    Some(Err(_)) => return Ok(None),
                }
            }
            Ok(Decoded::Incomplete) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
