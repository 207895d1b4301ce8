//! Handing over to a new process (`--upgrade-socket`): once the successor says it
//! accepts, a consumer-agent that announced GOAWAY (its PING's id) is told GOAWAY and
//! still gets the answer to its call in flight; an older consumer-agent's idle
//! connection is closed; the old agent stops once its consumers are gone.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::agent::{self, Frame, Status};
use codec::dubbo::Serialization;
use codec::Decoded;
use common::{hash_request, MockProvider, Mode, SOON};

/// Frames read from `s` until `want` of them came (or the peer closed).
fn frames(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < want {
        match agent::decode(buf).expect("a frame") {
            Decoded::Complete { msg, consumed } => {
                out.push(match msg {
                    Frame::GoAway => "goaway".to_owned(),
                    Frame::Pong { id } => format!("pong {id:x}"),
                    Frame::Response(r) => format!("response {} {:?}", r.id, r.status),
                    other => format!("{other:?}"),
                });
                buf.drain(..consumed);
            }
            Decoded::Incomplete => match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
        }
    }
    out
}

fn ping(s: &mut TcpStream, id: u64) {
    let mut out = Vec::new();
    agent::encode_ping(&mut out, id);
    s.write_all(&out).expect("ping");
}

#[test]
fn goaway_to_consumers_that_understand_it_and_the_old_agent_stops_once_they_left() {
    common::init_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, Duration::from_millis(300));
    let mut config = common::agent_config(
        provider.addr,
        agent_provider::config::SerializationArg::Hessian2,
    );
    config.registry = Some(format!("file://{}", dir.path().join("reg").display()));
    let socket = dir.path().join("upgrade.sock");
    config.upgrade_socket = Some(socket.clone());
    let agent = agent_provider::start(config).expect("start");
    let m = agent.metrics().clone();
    test_support::wait::assert_eventually("provider connection", SOON, || m.provider_up());
    test_support::wait::assert_eventually("the upgrade socket", SOON, || socket.exists());
    let handed_over = Arc::new(AtomicBool::new(false));
    let flag = handed_over.clone();
    agent.when_handed_over(move || flag.store(true, Ordering::SeqCst));

    // A consumer-agent that understands GOAWAY, with a call in flight (300 ms).
    let mut new_consumer = TcpStream::connect(agent.agent_addr()).expect("connect");
    new_consumer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = Vec::new();
    ping(&mut new_consumer, agent::GOAWAY_CAPABLE_PING);
    assert_eq!(
        frames(&mut new_consumer, &mut buf, 1),
        [format!("pong {:x}", agent::GOAWAY_CAPABLE_PING)]
    );
    // An older one, idle.
    let mut old_consumer = TcpStream::connect(agent.agent_addr()).expect("connect");
    old_consumer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut old_buf = Vec::new();
    ping(&mut old_consumer, 7);
    assert_eq!(frames(&mut old_consumer, &mut old_buf, 1), ["pong 7"]);

    let mut call = Vec::new();
    common::define_method(&mut call, 1, "hash");
    call.extend(hash_request(42, "in flight", 5000));
    new_consumer.write_all(&call).expect("call");
    // In flight only once the agent has sent it on (polled: a fixed pause may be too
    // short on a busy machine).
    test_support::wait::assert_eventually("the call in flight at the provider", SOON, || {
        m.inflight() > 0
    });

    // The successor (played here) takes the sockets and says it accepts.
    let mut takeover =
        reactor::handover::Takeover::connect(&socket, Duration::from_secs(5)).expect("takeover");
    let names: Vec<&str> = takeover.names().collect();
    assert_eq!(names, ["agent"]);
    let _sockets = takeover.take("agent").expect("agent sockets");
    takeover.ready(Duration::from_secs(5)).expect("ready");
    assert!(
        handed_over.load(Ordering::SeqCst),
        "the agent knows it handed over"
    );

    // GOAWAY first, then the answer of the call in flight.
    assert_eq!(
        frames(&mut new_consumer, &mut buf, 2),
        ["goaway".to_owned(), format!("response 42 {:?}", Status::Ok)]
    );
    // The older consumer-agent's idle connection is closed.
    assert_eq!(
        frames(&mut old_consumer, &mut old_buf, 1),
        Vec::<String>::new()
    );
    // Once the consumer-agent closes its old connection, the old agent has nothing left.
    drop(new_consumer);
    let start = Instant::now();
    agent.stop();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "stopped without waiting for the drain deadline: {:?}",
        start.elapsed()
    );
    provider.kill();
}
