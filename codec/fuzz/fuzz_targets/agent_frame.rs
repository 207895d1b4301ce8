//! `codec::agent::decode` over a stream of frames. Every decoded frame has
//! its attachments walked, is rendered, re-encoded, and must decode back to
//! itself (byte for byte when the original header was canonical).
#![no_main]

use codec::agent::{
    begin_raw_response, begin_request, begin_response_with, decode, encode_define, encode_goaway,
    encode_ping, encode_pong, finish, Frame, RequestHead, Status, HEADER_LEN, MAX_BODY,
};
use codec::Decoded;
use libfuzzer_sys::fuzz_target;

fn reencode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match frame {
        Frame::Define { call_id, signature } => {
            encode_define(&mut out, *call_id, *signature).expect("define re-encodes")
        }
        Frame::Request(req) => {
            let atts: Vec<(&str, &str)> = req.attachments.collect();
            let head = RequestHead {
                id: req.id,
                call_id: req.call_id,
                timeout_ms: req.timeout_ms,
                one_way: req.one_way,
                raw_result: req.raw_result,
                attachments: &atts,
            };
            let mark = begin_request(&mut out, &head).expect("request head re-encodes");
            out.extend_from_slice(req.args);
            finish(&mut out, mark).expect("request re-encodes");
        }
        Frame::Response(resp) => {
            let atts: Vec<(&str, &str)> = resp.attachments.collect();
            let mark = match resp.raw {
                Some(raw) => begin_raw_response(
                    &mut out,
                    resp.id,
                    resp.status,
                    raw.status,
                    raw.serialization,
                ),
                None => begin_response_with(&mut out, resp.id, resp.status, &atts)
                    .expect("response head re-encodes"),
            };
            out.extend_from_slice(resp.payload);
            finish(&mut out, mark).expect("response re-encodes");
        }
        Frame::Ping { id } => encode_ping(&mut out, *id),
        Frame::Pong { id } => encode_pong(&mut out, *id),
        Frame::GoAway => encode_goaway(&mut out),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..256 {
        match decode(rest) {
            Ok(Decoded::Complete { msg, consumed }) => {
                assert!(consumed >= HEADER_LEN && consumed <= rest.len());
                assert!(consumed - HEADER_LEN <= MAX_BODY);
                let original = &rest[..consumed];
                match &msg {
                    Frame::Request(req) => {
                        let n = req.attachments.remaining();
                        assert_eq!(req.attachments.len(), n);
                        let walked: Vec<_> = req.attachments.collect();
                        assert_eq!(walked.len(), n, "validated attachments stop early");
                        let atts_len: usize =
                            walked.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
                        assert_eq!(HEADER_LEN + 10 + atts_len + req.args.len(), consumed);
                        // Arguments are hessian2 values: decoding them must not panic.
                        if let Ok(Decoded::Complete { msg, .. }) = codec::hessian2::decode(req.args)
                        {
                            let _ = msg.to_text();
                        }
                    }
                    Frame::Response(resp) => {
                        let walked: Vec<_> = resp.attachments.collect();
                        assert_eq!(walked.len(), resp.attachments.remaining());
                        let atts_len: usize =
                            walked.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
                        let list_len = if walked.is_empty() { 0 } else { 2 + atts_len };
                        // A RAW answer's Dubbo status and serialization precede its body.
                        let raw_len = if resp.raw.is_some() { 2 } else { 0 };
                        assert_eq!(
                            HEADER_LEN + list_len + raw_len + resp.payload.len(),
                            consumed
                        );
                        assert_eq!(
                            resp.message().is_some(),
                            resp.raw.is_none() && !resp.status.carries_value()
                        );
                        assert_eq!(Status::from_u8(resp.status as u8), Some(resp.status));
                        let _ = resp.status.is_retryable();
                    }
                    Frame::Define { signature, .. } => {
                        assert_eq!(signature.to_owned().as_ref(), *signature);
                    }
                    Frame::Ping { .. } | Frame::Pong { .. } | Frame::GoAway => {
                        assert_eq!(consumed, HEADER_LEN)
                    },
                }
                let _ = format!("{msg:?}");
                let bytes = reencode(&msg);
                assert_eq!(bytes.len(), consumed);
                match decode(&bytes) {
                    Ok(Decoded::Complete {
                        msg: again,
                        consumed: c,
                    }) => {
                        assert_eq!(c, bytes.len());
                        assert_eq!(again, msg, "re-encoded frame decodes differently");
                    }
                    other => panic!("re-encoded frame does not decode: {other:?}"),
                }
                // The encoder writes reserved 0 and id 0 in a DEFINE; the
                // decoder ignores both, so compare bytes only when they agree.
                let canonical = original[5] == 0
                    && (!matches!(msg, Frame::Define { .. }) || original[6..14] == [0; 8]);
                if canonical {
                    assert_eq!(bytes, original, "re-encoding is not byte-identical");
                }
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete) => {
                // Incomplete only while a header or body is cut short.
                assert!(
                    rest.len() < HEADER_LEN || {
                        let len = u32::from_be_bytes(rest[14..18].try_into().unwrap()) as usize;
                        rest.len() < HEADER_LEN + len
                    }
                );
                break;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});
