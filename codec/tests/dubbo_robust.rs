//! Dubbo decoders under split, truncated and corrupted input.

use codec::dubbo::{self, status, Attachments, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::Decoded;

const PYTHON_REQUEST: &str = "dabbc20000000000000000000000010105322e302e323039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f5365727669636505302e302e300468617368124c6a6176612f6c616e672f537472696e673b0568656c6c6f4804706174683039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f5365727669636509696e746572666163653039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f536572766963650776657273696f6e05302e302e300567726f75704e5a";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn frames() -> Vec<Vec<u8>> {
    let mut v = vec![hex(PYTHON_REQUEST)];
    let mut args = Vec::new();
    hessian2::write_string(&mut args, &"p".repeat(512));
    hessian2::write_int(&mut args, 7);
    for ser in [Serialization::Hessian2, Serialization::Fastjson] {
        let req = Request {
            id: 42,
            serialization: ser,
            two_way: true,
            dubbo_version: "2.0.1",
            path: "svc",
            version: None,
            group: Some("g"),
            method: "m",
            descriptor: "Ljava/lang/String;I",
            args: &args,
            attachments: Attachments::Standard(&[("timeout", Some("300"))]),
        };
        let mut out = Vec::new();
        dubbo::encode_request(&mut out, &req).unwrap();
        v.push(out);
        let mut out = Vec::new();
        let val = Value::String("answer".into());
        dubbo::encode_response(
            &mut out,
            42,
            ser,
            status::OK,
            &dubbo::Reply::Value(&val),
            &[("dubbo", "2.0.2")],
        )
        .unwrap();
        v.push(out);
    }
    v
}

#[test]
fn frame_split_at_every_offset() {
    for f in frames() {
        for cut in 0..f.len() {
            assert_eq!(
                dubbo::decode_frame(&f[..cut]).unwrap(),
                Decoded::Incomplete,
                "cut {cut}"
            );
        }
        // Two frames back to back: the first is returned, the rest left.
        let mut two = f.clone();
        two.extend_from_slice(&f);
        let Decoded::Complete { msg, consumed } = dubbo::decode_frame(&two).unwrap() else {
            panic!()
        };
        assert_eq!(consumed, f.len());
        assert_eq!(msg.body, &f[16..]);
    }
}

#[test]
fn bodies_decode_and_truncations_fail_cleanly() {
    for f in frames() {
        let Decoded::Complete { msg, .. } = dubbo::decode_frame(&f).unwrap() else {
            panic!()
        };
        let decode = |body: &[u8]| {
            if msg.is_request() {
                dubbo::decode_request_body(msg.serialization_id(), body).map(|_| ())
            } else {
                dubbo::decode_response_body(msg.serialization_id(), msg.status(), body).map(|_| ())
            }
        };
        decode(msg.body).unwrap();
        for cut in 0..msg.body.len() {
            let _ = decode(&msg.body[..cut]);
        }
        for i in 0..msg.body.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut c = msg.body.to_vec();
                c[i] ^= x;
                let _ = decode(&c);
            }
        }
    }
}

#[test]
fn request_fields_survive_both_serializations() {
    for f in frames().into_iter().skip(1).step_by(2) {
        let Decoded::Complete { msg, .. } = dubbo::decode_frame(&f).unwrap() else {
            panic!()
        };
        assert_eq!(msg.id(), 42);
        let rb = dubbo::decode_request_body(msg.serialization_id(), msg.body).unwrap();
        assert_eq!(rb.args, [Value::String("p".repeat(512)), Value::Int(7)]);
        let keys: Vec<&str> = rb.attachments.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["path", "interface", "group", "timeout"]);
        assert_eq!(rb.attachment("group"), Some("g"));
    }
}

#[test]
fn corrupted_headers_never_panic() {
    for f in frames() {
        for i in 0..16 {
            for x in [0x01u8, 0x80, 0xff] {
                let mut c = f.clone();
                c[i] ^= x;
                let _ = dubbo::decode_frame(&c);
            }
        }
    }
}

#[test]
fn fastjson_request_with_bad_args_leaves_output_untouched() {
    let req = Request {
        id: 1,
        serialization: Serialization::Fastjson,
        two_way: true,
        dubbo_version: "2.0.1",
        path: "svc",
        version: None,
        group: None,
        method: "m",
        descriptor: "Ljava/lang/String;",
        args: &[0x05, b'a'],
        attachments: Attachments::Exactly(&[]),
    };
    let mut out = vec![1, 2, 3];
    assert!(dubbo::encode_request(&mut out, &req).is_err());
    assert_eq!(out, [1, 2, 3]);
}
