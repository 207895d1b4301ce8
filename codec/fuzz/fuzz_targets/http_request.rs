//! `codec::http::RequestDecoder::decode` on a pipelined byte stream, fed in
//! one piece and again in random-size pieces (as a connection delivers it,
//! unconsumed bytes kept). Both feeds must yield the same requests and end
//! the same way.
//!
//! Input: byte 0 controls the run (low 7 bits seed the piece sizes, bit 7
//! selects small limits), the rest is the stream.
#![no_main]

use codec::http::{HttpError, Limits, Request, RequestDecoder};
use codec::Decoded;
use libfuzzer_sys::fuzz_target;

/// Most requests decoded from one input (bounds the work per run).
const MAX_REQUESTS: usize = 64;

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was consumed by whole requests.
    Clean,
    /// Bytes were left over, not yet a whole request.
    Incomplete(usize),
    Error(HttpError),
    /// Stopped after MAX_REQUESTS.
    Capped,
}

/// What a decoded request looks like, owned, so runs over different buffers
/// can be compared.
fn summary(req: &Request<'_>, buf: &[u8], consumed: usize) -> String {
    // Every borrowed part lies inside the consumed bytes.
    let within = |s: &[u8]| {
        let (b, e) = (buf.as_ptr() as usize, buf.as_ptr() as usize + consumed);
        let p = s.as_ptr() as usize;
        s.is_empty() || (p >= b && p + s.len() <= e)
    };
    assert!(within(req.method.as_bytes()));
    assert!(within(req.path.as_bytes()));
    assert!(req.content_type.is_none_or(within));
    for (n, v) in req.headers() {
        assert!(within(n.as_bytes()) && within(v));
    }
    assert!(req.body.len() <= consumed);
    if let Some(n) = req.content_length {
        assert!(!req.chunked);
        assert_eq!(n, req.body.len() as u64);
    }
    if req.header("content-type").is_some() {
        assert!(req.content_type.is_some());
    }
    if req.is_form() {
        let _ = codec::form::race_call(&req.body);
    }
    format!("{req:?} ct={:?}", req.content_type)
}

fn one_shot(limits: Limits, stream: &[u8]) -> (Vec<String>, End) {
    let mut dec = RequestDecoder::with_limits(limits);
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        if out.len() == MAX_REQUESTS {
            return (out, End::Capped);
        }
        let buf = &stream[off..];
        match dec.decode(buf) {
            Ok(Decoded::Complete { msg, consumed }) => {
                assert!(consumed > 0, "Complete consumed 0 bytes");
                assert!(consumed <= buf.len());
                assert!(msg.body.len() <= limits.max_body);
                out.push(summary(&msg, buf, consumed));
                off += consumed;
            }
            Ok(Decoded::Incomplete) => {
                let _ = dec.take_continue();
                // Idempotent: asking again with the same bytes gives the same answer.
                assert_eq!(dec.decode(buf), Ok(Decoded::Incomplete));
                return (
                    out,
                    if buf.is_empty() {
                        End::Clean
                    } else {
                        End::Incomplete(buf.len())
                    },
                );
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 413 | 417 | 431 | 501));
                assert!(!e.reason().is_empty() && e.closes_connection());
                return (out, End::Error(e));
            }
        }
    }
}

/// xorshift, seeded from the control byte.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

fn pieces(limits: Limits, stream: &[u8], seed: u8) -> (Vec<String>, End) {
    let mut rng = Rng(0x9e37_79b9 ^ u32::from(seed).wrapping_mul(0x0101_0101));
    let mut dec = RequestDecoder::with_limits(limits);
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        // Mostly small pieces, sometimes a large one.
        let n = match rng.next() % 8 {
            0 => 1 + rng.next() as usize % 4096,
            _ => 1 + rng.next() as usize % 17,
        };
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            if out.len() == MAX_REQUESTS {
                return (out, End::Capped);
            }
            match dec.decode(&buf) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    assert!(consumed > 0, "Complete consumed 0 bytes");
                    assert!(consumed <= buf.len());
                    out.push(summary(&msg, &buf, consumed));
                    buf.drain(..consumed);
                }
                Ok(Decoded::Incomplete) => {
                    let _ = dec.take_continue();
                    break;
                }
                Err(e) => return (out, End::Error(e)),
            }
        }
    }
    let end = if buf.is_empty() {
        End::Clean
    } else {
        End::Incomplete(buf.len())
    };
    (out, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let limits = if ctl & 0x80 != 0 {
        Limits {
            max_head: 64,
            max_body: 32,
        }
    } else {
        Limits::default()
    };
    let whole = one_shot(limits, stream);
    let split = pieces(limits, stream, ctl & 0x7f);
    if whole.1 == End::Capped || split.1 == End::Capped {
        let n = whole.0.len().min(split.0.len());
        assert_eq!(whole.0[..n], split.0[..n]);
    } else {
        assert_eq!(whole, split, "one-shot and piecewise decoding differ");
    }
});
