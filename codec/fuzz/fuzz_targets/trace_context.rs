//! `codec::trace`: `extract` on arbitrary headers (`name: value` lines), and what a
//! continued context writes reads back as the same trace and span.
#![no_main]

use codec::trace::{self, Sw8Local};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let headers: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let Some(ctx) = trace::extract(get) else {
        return;
    };
    assert_ne!(ctx.trace_id, [0; 16]);
    assert_ne!(ctx.span_id, [0; 8]);
    let child = ctx.child([1, 2, 3, 4, 5, 6, 7, 8]);
    let local = Sw8Local {
        service: "consumer-agent",
        instance: "127.0.0.1:20000",
        endpoint: "a.Svc.m",
        address: "127.0.0.1:30000",
    };
    let mut buf = String::new();
    let fields = child.encode(&local, &mut buf);
    let written: Vec<(&str, &str)> = fields.iter(&buf).collect();
    let back = trace::extract(|name| {
        written
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    })
    .expect("what a context writes reads back");
    assert_eq!((back.trace_id, back.span_id), (child.trace_id, child.span_id));
    assert_eq!(back.format, child.format);
});
