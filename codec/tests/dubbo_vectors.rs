//! Dubbo frames and bodies against golden bytes from other implementations.

use codec::dubbo::{self, status, Attachments, Outcome, Reply, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;

/// `hash("hello")` as sent by the PyPI dubbo-ssl-python 0.9.6 client.
const PYTHON_REQUEST: &str = "dabbc20000000000000000000000010105322e302e323039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f5365727669636505302e302e300468617368124c6a6176612f6c616e672f537472696e673b0568656c6c6f4804706174683039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f5365727669636509696e746572666163653039636f6d2e616c69626162612e647562626f2e706572666f726d616e63652e64656d6f2e70726f76696465722e4948656c6c6f536572766963650776657273696f6e05302e302e300567726f75704e5a";

/// A Java `RuntimeException("boom")` response body, from shared/vectors.
const JAVA_EXCEPTION_BODY: &str = "90431a6a6176612e6c616e672e52756e74696d65457863657074696f6e940d64657461696c4d6573736167650563617573650a737461636b54726163651473757070726573736564457863657074696f6e736004626f6f6d5190711c5b6a6176612e6c616e672e537461636b5472616365456c656d656e74431b6a6176612e6c616e672e537461636b5472616365456c656d656e74980f636c6173734c6f616465724e616d650a6d6f64756c654e616d650d6d6f64756c6556657273696f6e0e6465636c6172696e67436c6173730a6d6574686f644e616d650866696c654e616d650a6c696e654e756d62657206666f726d617461036170704e4e0148046d61696e06482e6a617661a391701f6a6176612e7574696c2e436f6c6c656374696f6e7324456d7074794c697374";

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn frame(buf: &[u8]) -> (dubbo::Frame<'_>, usize) {
    match dubbo::decode_frame(buf).unwrap() {
        Decoded::Complete { msg, consumed } => (msg, consumed),
        Decoded::Incomplete => panic!("incomplete"),
    }
}

#[test]
fn python_request_decodes() {
    let bytes = hex(PYTHON_REQUEST);
    let (f, n) = frame(&bytes);
    assert_eq!(n, bytes.len());
    assert!(f.is_request() && f.is_two_way() && !f.is_event());
    assert_eq!(f.serialization_id(), dubbo::SERIALIZATION_HESSIAN2);
    // The README says id 1, but the bytes say 0: this client starts at 0.
    assert_eq!(f.id(), 0);
    let body = dubbo::decode_request_body(f.serialization_id(), f.body).unwrap();
    assert_eq!(body.dubbo_version, "2.0.2");
    assert_eq!(body.path, SERVICE);
    assert_eq!(body.version.as_deref(), Some("0.0.0"));
    assert_eq!(body.method, "hash");
    assert_eq!(body.descriptor, "Ljava/lang/String;");
    assert_eq!(body.args, [Value::String("hello".into())]);
    assert_eq!(string_hash_code(body.args[0].as_str().unwrap()), 99162322);
    let keys: Vec<&str> = body.attachments.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["path", "interface", "version", "group"]);
    assert_eq!(body.attachment("interface"), Some(SERVICE));
    assert_eq!(body.attachment("version"), Some("0.0.0"));
    assert_eq!(body.attachments[3].1, Value::Null);
}

#[test]
fn our_request_is_byte_identical_to_python() {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "hello");
    let req = Request {
        id: 0,
        serialization: Serialization::Hessian2,
        two_way: true,
        dubbo_version: "2.0.2",
        path: SERVICE,
        version: Some("0.0.0"),
        group: None,
        method: "hash",
        descriptor: &dubbo::jvm_descriptor(&["java.lang.String"]),
        args: &args,
        attachments: Attachments::Standard(&[("group", None)]),
    };
    let mut out = vec![0xee]; // existing bytes are kept
    dubbo::encode_request(&mut out, &req).unwrap();
    assert_eq!(out[0], 0xee);
    assert_eq!(hex(PYTHON_REQUEST), &out[1..]);
}

fn race_request(ser: Serialization, param: &str, args: &mut Vec<u8>) -> Vec<u8> {
    args.clear();
    hessian2::write_string(args, param);
    let req = Request {
        id: 7,
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
    };
    let mut out = Vec::new();
    dubbo::encode_request(&mut out, &req).unwrap();
    out
}

#[test]
fn race_fastjson_layout_is_byte_exact() {
    let mut args = Vec::new();
    let param = "a\"b\\c/\u{1}é😀";
    let out = race_request(Serialization::Fastjson, param, &mut args);
    let body = format!(
        "\"2.0.1\"\n\"{SERVICE}\"\nnull\n\"hash\"\n\"Ljava/lang/String;\"\n{}\n{{\"path\":\"{SERVICE}\"}}\n",
        r#""a\"b\\c/\u0001é😀""#
    );
    let mut want = hex("dabb c6 00 0000000000000007");
    want.extend_from_slice(&(body.len() as u32).to_be_bytes());
    want.extend_from_slice(body.as_bytes());
    assert_eq!(String::from_utf8_lossy(&out[16..]), body);
    assert_eq!(out, want);
    // And a mock provider reads it back.
    let (f, _) = frame(&out);
    let rb = dubbo::decode_request_body(f.serialization_id(), f.body).unwrap();
    assert_eq!(rb.version, None);
    assert_eq!(rb.args, [Value::String(param.into())]);
    assert_eq!(rb.attachment("path"), Some(SERVICE));
}

/// The argument line is the parameter as JSON, whichever way the hessian2 string came
/// (one ASCII chunk, written straight; chunked or not ASCII, through the decoder).
#[test]
fn fastjson_arguments_are_their_strings_as_json() {
    let mut params: Vec<String> = ["", "x", "a\"b\\c/\u{1}\u{8}\u{c}\n\t\u{1f}", "é😀"]
        .map(String::from)
        .into();
    for len in [31, 32, 1023, 1024, 65_535, 65_536, 100_000] {
        params.push("q\"".repeat(len).chars().take(len).collect());
    }
    let mut args = Vec::new();
    for param in &params {
        let out = race_request(Serialization::Fastjson, param, &mut args);
        let (f, _) = frame(&out);
        let line = f.body.split(|&b| b == b'\n').nth(5).unwrap();
        assert_eq!(line, serde_json::to_string(param).unwrap().as_bytes());
        let rb = dubbo::decode_request_body(f.serialization_id(), f.body).unwrap();
        assert_eq!(rb.args, [Value::String(param.clone())]);
    }
}

#[test]
fn race_hessian2_request_round_trips() {
    let mut args = Vec::new();
    let param: String = "x".repeat(512);
    let out = race_request(Serialization::Hessian2, &param, &mut args);
    assert_eq!(&out[..4], [0xda, 0xbb, 0xc2, 0x00]);
    let (f, _) = frame(&out);
    let rb = dubbo::decode_request_body(f.serialization_id(), f.body).unwrap();
    assert_eq!(rb.dubbo_version, "2.0.1");
    assert_eq!(rb.version, None);
    assert_eq!(rb.args, [Value::String(param)]);
    assert_eq!(
        rb.attachments,
        [("path".to_owned(), Value::String(SERVICE.into()))]
    );
}

#[test]
fn java_reply_body_decodes() {
    let body = hex("94 49 05 e9 18 d2 48 05 64 75 62 62 6f 05 32 2e 30 2e 32 5a");
    let r = dubbo::decode_response_body(2, status::OK, &body).unwrap();
    assert_eq!(r.outcome, Outcome::Value(Value::Int(99162322)));
    assert_eq!(
        r.attachments,
        [("dubbo".to_owned(), Value::String("2.0.2".into()))]
    );
    // Flag 1 without attachments, flag 2 null, flag 5 null + attachments.
    let r = dubbo::decode_response_body(2, status::OK, &hex("91 90")).unwrap();
    assert_eq!(r.outcome, Outcome::Value(Value::Int(0)));
    let r = dubbo::decode_response_body(2, status::OK, &hex("92")).unwrap();
    assert_eq!(r.outcome, Outcome::Null);
    let r = dubbo::decode_response_body(2, status::OK, &hex("95 48 5a")).unwrap();
    assert_eq!(r.outcome, Outcome::Null);
    // dubbo-remoting's falsy quirk (flag missing): reported, not misread.
    assert!(dubbo::decode_response_body(2, status::OK, &hex("90")).is_err());
    assert!(dubbo::decode_response_body(2, status::OK, &hex("96 90")).is_err());
}

#[test]
fn java_exception_response_gives_message() {
    let body = hex(JAVA_EXCEPTION_BODY);
    let r = dubbo::decode_response_body(2, status::OK, &body).unwrap();
    let Outcome::Exception { message, value } = r.outcome else {
        panic!()
    };
    assert_eq!(message.as_deref(), Some("boom"));
    // Java's "no cause" is the exception itself: the chain ends there.
    assert_eq!(
        hessian2::exception_summary(&value).to_json().to_string(),
        r#"{"class":"java.lang.RuntimeException","message":"boom"}"#
    );
}

#[test]
fn error_status_gives_text() {
    let mut body = Vec::new();
    hessian2::write_string(&mut body, "Service not found");
    let r = dubbo::decode_response_body(2, status::SERVICE_NOT_FOUND, &body).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Error {
            status: 60,
            message: "Service not found".into()
        }
    );
    let r = dubbo::decode_response_body(6, status::SERVER_ERROR, b"\"oops\"\n").unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Error {
            status: 80,
            message: "oops".into()
        }
    );
}

#[test]
fn heartbeats() {
    let mut out = Vec::new();
    dubbo::encode_heartbeat_request(&mut out, 5);
    assert_eq!(out, hex("da bb e2 00 0000000000000005 00000001 4e"));
    let (f, _) = frame(&out);
    assert!(f.is_heartbeat() && f.is_two_way() && f.is_request());
    out.clear();
    dubbo::encode_heartbeat_reply(&mut out, 5);
    assert_eq!(out, hex("da bb 22 14 0000000000000005 00000001 4e"));
    let (f, _) = frame(&out);
    assert!(f.is_heartbeat() && !f.is_request());
}

#[test]
fn response_encoder_matches_java() {
    let mut out = Vec::new();
    let v = Value::Int(99162322);
    dubbo::encode_response(
        &mut out,
        9,
        Serialization::Hessian2,
        status::OK,
        &Reply::Value(&v),
        &[("dubbo", "2.0.2")],
    )
    .unwrap();
    let mut want = hex("dabb 02 14 0000000000000009 00000014");
    want.extend(hex(
        "94 49 05 e9 18 d2 48 05 64 75 62 62 6f 05 32 2e 30 2e 32 5a",
    ));
    assert_eq!(out, want);

    out.clear();
    dubbo::encode_response(
        &mut out,
        9,
        Serialization::Fastjson,
        status::OK,
        &Reply::Value(&v),
        &[],
    )
    .unwrap();
    assert_eq!(&out[..4], [0xda, 0xbb, 0x06, 0x14]);
    assert_eq!(&out[16..], b"1\n99162322\n");
    let r = dubbo::decode_response_body(6, status::OK, &out[16..]).unwrap();
    assert_eq!(r.outcome, Outcome::Value(v.clone()));

    for ser in [Serialization::Hessian2, Serialization::Fastjson] {
        for att in [&[][..], &[("k", "v")][..]] {
            out.clear();
            dubbo::encode_response(
                &mut out,
                1,
                ser,
                status::OK,
                &Reply::Exception("bad thing"),
                att,
            )
            .unwrap();
            let (f, _) = frame(&out);
            let r = dubbo::decode_response_body(f.serialization_id(), f.status(), f.body).unwrap();
            let Outcome::Exception { message, .. } = r.outcome else {
                panic!()
            };
            assert_eq!(message.as_deref(), Some("bad thing"));
            assert_eq!(r.attachments.len(), att.len());

            out.clear();
            dubbo::encode_response(&mut out, 1, ser, status::OK, &Reply::Null, att).unwrap();
            let (f, _) = frame(&out);
            let r = dubbo::decode_response_body(f.serialization_id(), f.status(), f.body).unwrap();
            assert_eq!(r.outcome, Outcome::Null);

            out.clear();
            dubbo::encode_response(
                &mut out,
                1,
                ser,
                status::SERVER_THREADPOOL_EXHAUSTED,
                &Reply::Error("busy"),
                att,
            )
            .unwrap();
            let (f, _) = frame(&out);
            let r = dubbo::decode_response_body(f.serialization_id(), f.status(), f.body).unwrap();
            assert_eq!(
                r.outcome,
                Outcome::Error {
                    status: 100,
                    message: "busy".into()
                }
            );
        }
    }
}

#[test]
fn jvm_descriptors() {
    assert_eq!(
        dubbo::jvm_descriptor(&["java.lang.String"]),
        "Ljava/lang/String;"
    );
    assert_eq!(
        dubbo::jvm_descriptor(&[
            "int",
            "long",
            "boolean",
            "byte[]",
            "java.util.List[]",
            "double",
            "[Ljava.lang.String;"
        ]),
        "IJZ[B[Ljava/util/List;D[Ljava/lang/String;"
    );
    assert_eq!(
        dubbo::descriptor_arity("IJZ[B[Ljava/util/List;D[Ljava/lang/String;").unwrap(),
        7
    );
    assert_eq!(dubbo::descriptor_arity("").unwrap(), 0);
    assert!(dubbo::descriptor_arity("Ljava/lang/String").is_err());
    assert!(dubbo::descriptor_arity("Q").is_err());
}

#[test]
fn frame_limits() {
    let mut h = hex("dabb c2 00 0000000000000001");
    h.extend_from_slice(&((dubbo::MAX_BODY_LEN as u32) + 1).to_be_bytes());
    assert!(matches!(
        dubbo::decode_frame(&h),
        Err(dubbo::Error::BodyTooLong { .. })
    ));
    let mut h = hex("dabb c2 00 0000000000000001");
    h.extend_from_slice(&(-1i32).to_be_bytes());
    assert!(matches!(
        dubbo::decode_frame(&h),
        Err(dubbo::Error::NegativeBodyLength(-1))
    ));
    assert!(matches!(
        dubbo::decode_frame(&[0xda, 0x00]),
        Err(dubbo::Error::BadMagic(_))
    ));
    assert!(matches!(
        dubbo::decode_frame(&[0x00]),
        Err(dubbo::Error::BadMagic(_))
    ));
    assert_eq!(dubbo::decode_frame(&[0xda]).unwrap(), Decoded::Incomplete);
    assert!(matches!(
        dubbo::decode_request_body(3, b"N"),
        Err(dubbo::Error::UnsupportedSerialization(3))
    ));
}

#[test]
fn read_only_and_heartbeat_events_are_told_apart() {
    let event = |flags: u8, body: &[u8]| {
        let mut out = Vec::new();
        dubbo::write_header(&mut out, flags, 20, 7, body.len() as u32);
        out.extend_from_slice(body);
        out
    };
    let hessian = dubbo::FLAG_EVENT | dubbo::SERIALIZATION_HESSIAN2;
    let fastjson = dubbo::FLAG_EVENT | dubbo::SERIALIZATION_FASTJSON;
    for (bytes, readonly, heartbeat) in [
        (event(hessian, b"\x01R"), true, false),
        (event(fastjson, b"\"R\"\n"), true, false),
        (event(hessian, b"N"), false, true),
        (event(hessian | dubbo::FLAG_REQUEST, b"N"), false, true),
        // Not events: the same bytes as a body say nothing.
        (event(dubbo::SERIALIZATION_HESSIAN2, b"\x01R"), false, false),
    ] {
        let Decoded::Complete { msg, .. } = dubbo::decode_frame(&bytes).unwrap() else {
            panic!("a whole frame");
        };
        assert_eq!(msg.is_readonly_event(), readonly, "{bytes:?}");
        assert_eq!(msg.is_heartbeat(), heartbeat, "{bytes:?}");
    }
}

#[test]
fn a_python_clients_request_is_read_for_routing_with_its_arguments_as_written() {
    let frame = hex(PYTHON_REQUEST);
    let Decoded::Complete { msg, .. } = dubbo::decode_frame(&frame).unwrap() else {
        panic!("a whole frame");
    };
    let r = dubbo::decode_routed_request(msg.body).unwrap();
    assert_eq!(
        (
            r.dubbo_version.as_ref(),
            r.path.as_ref(),
            r.version.as_ref()
        ),
        ("2.0.2", SERVICE, "0.0.0")
    );
    assert_eq!(
        (r.method.as_ref(), r.descriptor.as_ref()),
        ("hash", "Ljava/lang/String;")
    );
    let mut hello = Vec::new();
    hessian2::write_string(&mut hello, "hello");
    assert_eq!(r.args, &hello[..], "the argument's own bytes");
    // `group` is null there: only string attachments are kept.
    let keys: Vec<&str> = r.attachments.iter().map(|(k, _)| k.as_ref()).collect();
    // All of it borrowed from the body: Java's short ASCII strings need no copy.
    assert!(matches!(r.path, std::borrow::Cow::Borrowed(_)));
    assert!(r.attachments.iter().all(|(k, v)| matches!(
        (k, v),
        (std::borrow::Cow::Borrowed(_), std::borrow::Cow::Borrowed(_))
    )));
    assert_eq!(keys, ["path", "interface", "version"]);
    assert_eq!(r.attachment("interface"), Some(SERVICE));
    // Cut anywhere, the body is refused, never misread; except right after the
    // arguments, where a body without attachments (which Dubbo allows) ends.
    let args_end = msg.body.len() - (msg.body.len() - 1 - 100);
    for cut in 0..msg.body.len() {
        let r = dubbo::decode_routed_request(&msg.body[..cut]);
        if cut == args_end {
            assert!(r.unwrap().attachments.is_empty());
        } else {
            assert!(r.is_err(), "cut at {cut}");
        }
    }
}

#[test]
fn routed_requests_read_alike_borrowed_or_decoded() {
    // Non-ASCII names, a chunked string and an attachment that is not a string take the
    // decoder's way; the answer is the same shape.
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "x");
    let long = "v".repeat(40_000);
    for (path, version, extra) in [
        (SERVICE, "1.0", vec![("trace", Some("t-1"))]),
        ("com.例子.Service", "1.0", vec![("trace", Some("ü"))]),
        (
            SERVICE,
            long.as_str(),
            vec![("trace", Some("t-1")), ("gone", None)],
        ),
    ] {
        let mut out = Vec::new();
        dubbo::encode_request(
            &mut out,
            &Request {
                id: 1,
                serialization: Serialization::Hessian2,
                two_way: true,
                dubbo_version: "2.0.2",
                path,
                version: Some(version),
                group: Some("g"),
                method: "hash",
                descriptor: "Ljava/lang/String;",
                args: &args,
                attachments: Attachments::Standard(&extra),
            },
        )
        .unwrap();
        let body = &out[dubbo::HEADER_LEN..];
        let r = dubbo::decode_routed_request(body).unwrap();
        let full = dubbo::decode_request_body(2, body).unwrap();
        assert_eq!(r.path, full.path);
        assert_eq!(Some(r.version.as_ref()), full.version.as_deref());
        assert_eq!(r.args, &args[..]);
        assert_eq!(r.attachment("group"), Some("g"));
        let want: Vec<(&str, &str)> = full
            .attachments
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
            .collect();
        let got: Vec<(&str, &str)> = r
            .attachments
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(got, want, "{path}");
    }
}
