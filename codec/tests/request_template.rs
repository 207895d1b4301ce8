//! `RequestTemplate` writes, byte for byte, what `encode_request` writes with standard
//! attachments, whatever the names, versions, groups and extra attachments.

use codec::dubbo::{self, Attachments, Request, RequestTemplate, Serialization};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9./;\u{4f60}]{0,40}").unwrap()
}

/// Keys as callers send them, the routing ones (in any case) among them.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        Just("timeout".to_owned()),
        Just("Version".to_owned()),
        Just("group".to_owned()),
        Just("PATH".to_owned()),
        Just("interface".to_owned()),
        Just("traceparent".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_template_writes_what_encode_request_writes(
        path in name(),
        version in proptest::option::of(name()),
        group in proptest::option::of(name()),
        method in name(),
        descriptor in name(),
        dubbo_version in name(),
        id in any::<i64>(),
        two_way in any::<bool>(),
        args in proptest::collection::vec(any::<u8>(), 0..64),
        extra in proptest::collection::vec((key(), proptest::option::of(name())), 0..5),
    ) {
        let extra: Vec<(&str, Option<&str>)> =
            extra.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        let request = Request {
            id,
            serialization: Serialization::Hessian2,
            two_way,
            dubbo_version: &dubbo_version,
            path: &path,
            version: version.as_deref(),
            group: group.as_deref(),
            method: &method,
            descriptor: &descriptor,
            args: &args,
            attachments: Attachments::Standard(&extra),
        };
        let mut want = b"before".to_vec();
        dubbo::encode_request(&mut want, &request).unwrap();
        let template =
            RequestTemplate::new(&path, version.as_deref(), group.as_deref(), &method, &descriptor);
        let mut got = b"before".to_vec();
        template.encode(&mut got, id, two_way, &dubbo_version, &args, &extra).unwrap();
        prop_assert_eq!(got, want);
    }
}
