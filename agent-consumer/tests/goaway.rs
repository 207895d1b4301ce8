//! GOAWAY from a provider-agent being replaced (`codec::agent`): the consumer-agent
//! announces it understands it (its PING's id), moves new calls to a new connection
//! once that one answers its PING, lets the call in flight on the old connection finish
//! there, and then closes the old connection itself. No call fails.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codec::agent::{self, Frame, Status};
use codec::hessian2::{self, Value};
use codec::Decoded;

/// What the fake provider-agent saw, per connection (in accept order).
#[derive(Debug, Default, Clone)]
struct Seen {
    ping_ids: Vec<u64>,
    params: Vec<String>,
    /// The consumer-agent closed it (EOF), and when.
    closed_at: Option<Instant>,
    /// When the delayed answer went out (the first connection's).
    answered_at: Option<Instant>,
}

fn answer(out: &mut Vec<u8>, id: u64, param: &str) {
    let mut payload = Vec::new();
    hessian2::ser::write_int(&mut payload, codec::java::string_hash_code(param));
    agent::encode_response(out, id, Status::Ok, &payload).expect("encode");
}

/// A provider-agent whose first connection says GOAWAY on its first call, and answers
/// that call 1 s later; later connections answer at once.
fn fake_agent() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let index = {
                let mut all = s.lock().expect("lock");
                all.push(Seen::default());
                all.len() - 1
            };
            let s = s.clone();
            std::thread::spawn(move || serve(stream, index, &s));
        }
    });
    (addr, seen)
}

fn serve(mut stream: TcpStream, index: usize, seen: &Arc<Mutex<Vec<Seen>>>) {
    let writer = Arc::new(Mutex::new(stream.try_clone().expect("clone")));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if let Some(s) = seen.lock().expect("lock").get_mut(index) {
                    s.closed_at = Some(Instant::now());
                }
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok(Decoded::Complete { msg, consumed }) = agent::decode(&buf[pos..]) {
            pos += consumed;
            match msg {
                Frame::Ping { id } => {
                    agent::encode_pong(&mut out, id);
                    seen.lock().expect("lock")[index].ping_ids.push(id);
                }
                Frame::Request(r) => {
                    let param = match hessian2::decode(r.args) {
                        Ok(Decoded::Complete {
                            msg: Value::String(s),
                            ..
                        }) => s,
                        _ => String::new(),
                    };
                    let first = {
                        let mut all = seen.lock().expect("lock");
                        all[index].params.push(param.clone());
                        index == 0 && all[index].params.len() == 1
                    };
                    if first {
                        // Being replaced: GOAWAY now, this call's answer later.
                        agent::encode_goaway(&mut out);
                        let (w, s, id) = (writer.clone(), seen.clone(), r.id);
                        std::thread::spawn(move || {
                            std::thread::sleep(LATE_ANSWER);
                            let mut late = Vec::new();
                            answer(&mut late, id, &param);
                            s.lock().expect("lock")[0].answered_at = Some(Instant::now());
                            if let Ok(mut w) = w.lock() {
                                let _ = w.write_all(&late);
                            }
                        });
                    } else {
                        answer(&mut out, r.id, &param);
                    }
                }
                _ => {}
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            let Ok(mut w) = writer.lock() else { return };
            if w.write_all(&out).is_err() {
                return;
            }
        }
    }
}

/// How long after its GOAWAY the first connection answers its call.
const LATE_ANSWER: Duration = Duration::from_secs(1);

fn call(addr: std::net::SocketAddr, param: &str) -> util::Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&util::race_request(param)).expect("write");
    util::read_answers(&mut s, 1, Duration::from_secs(5))
        .pop()
        .expect("an answer")
}

#[test]
fn goaway_moves_calls_to_a_new_connection_and_the_old_one_closes_after_its_calls() {
    let (agent_addr, seen) = fake_agent();
    let running = util::consumer(&[agent_addr], &[]);
    util::wait_ready(&running);
    let http = running.http_addr();
    // A call on the first connection: GOAWAY comes with it, its answer 1 s later.
    let slow = std::thread::spawn(move || call(http, "first"));
    let end = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").len() < 2 {
        assert!(Instant::now() < end, "no new connection after GOAWAY");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Wait for the new connection to be proved (its PING answered), then call again.
    while seen.lock().expect("lock")[1].ping_ids.is_empty() {
        assert!(Instant::now() < end, "no PING on the new connection");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The consumer-agent moves calls to it once it has read the PONG, which nothing
    // shows from here: give it time (well inside the old call's LATE_ANSWER, so that the
    // old connection still has that call in flight when the next one is made).
    std::thread::sleep(Duration::from_millis(200));
    let next = call(http, "second");
    assert_eq!(next.status, 200);
    assert_eq!(
        next.body,
        codec::java::string_hash_code("second").to_string()
    );
    let first = slow.join().expect("first call");
    assert_eq!(
        first.status, 200,
        "the call in flight on the old connection"
    );
    assert_eq!(
        first.body,
        codec::java::string_hash_code("first").to_string()
    );
    // The consumer-agent closes the old connection once its call is answered.
    while seen.lock().expect("lock")[0].closed_at.is_none() {
        assert!(Instant::now() < end, "the old connection was never closed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = seen.lock().expect("lock").clone();
    assert_eq!(
        all[0].params,
        ["first"],
        "nothing new on the old connection"
    );
    assert_eq!(all[1].params, ["second"]);
    assert!(
        all[0].closed_at >= all[0].answered_at,
        "closed after its answer"
    );
    assert!(all[1].closed_at.is_none(), "the new connection stays");
    // Both connections were told this consumer-agent understands GOAWAY.
    for s in &all {
        assert!(
            s.ping_ids
                .iter()
                .all(|&id| id == agent::GOAWAY_CAPABLE_PING),
            "{:?}",
            s.ping_ids
        );
    }
    running.stop();
}
