//! Regressions for bugs found while fuzzing the decoders (codec/fuzz). Each
//! input here is also in the fuzz corpus of the target that exercises it.

use codec::dubbo::{self, decode_request_body};
use codec::hessian2::{self, Decoder, Error, Value, MAX_DEPTH, MAX_NODES};
use codec::Decoded;

fn write_ref(out: &mut Vec<u8>, index: usize) {
    out.push(0x51);
    hessian2::write_int(out, index as i32);
}

fn height(v: &Value) -> usize {
    match v {
        Value::List { items, .. } => 1 + items.iter().map(height).max().unwrap_or(0),
        _ => 1,
    }
}

/// `W [ item0, item1, ... ] Z` where item `i` is 62 nested one-element
/// lists around a reference to item `i - 1` (item 0 holds a null): each
/// reference copy adds 62 levels to the resolved tree.
fn reference_chain(items: usize) -> Vec<u8> {
    const NEST: usize = 62;
    let mut b = vec![b'W'];
    for i in 0..items {
        b.extend(std::iter::repeat_n(0x79, NEST));
        match i {
            0 => b.push(b'N'),
            _ => write_ref(&mut b, 1 + NEST * (i - 1)),
        }
    }
    b.push(b'Z');
    b
}

/// Bug: a reference was replaced by a copy of its value without checking
/// the depth, so a chain of references nested the resolved tree without
/// limit (6 KB of input gave a tree 6000 levels deep, 1.2 GB of copies kept
/// in the reference table and 12 s of work; deeper ones overflow the stack
/// when the value is dropped or rendered).
#[test]
fn reference_copies_nest_past_max_depth() {
    // One item nests 63 levels: fine.
    let one = hessian2::decode(&reference_chain(1)).unwrap();
    let Decoded::Complete { msg, .. } = one else {
        panic!("incomplete")
    };
    assert_eq!(height(&msg), 64);
    // A copy of it one level down would be 125 levels deep.
    for items in [2, 100] {
        let start = std::time::Instant::now();
        assert_eq!(
            hessian2::decode(&reference_chain(items)),
            Err(Error::TooDeep { max: MAX_DEPTH })
        );
        assert!(start.elapsed().as_secs() < 5);
    }
    // A shallow value may still be referenced from shallow places.
    let mut ok = vec![b'W', 0x79, 0x79, b'N'];
    write_ref(&mut ok, 1);
    write_ref(&mut ok, 2);
    ok.push(b'Z');
    let Ok(Decoded::Complete { msg, .. }) = hessian2::decode(&ok) else {
        panic!("a shallow reference should resolve")
    };
    assert_eq!(height(&msg), 4);
}

/// `W [ L0, L1, L2, L3, L4 ] Z` with `L0` 16 ints and `Lk` 16 references to
/// `L(k-1)`: about 1.2 million nodes, within one call's budget.
fn doubling_lists() -> Vec<u8> {
    let mut b = vec![b'W', b'X'];
    hessian2::write_int(&mut b, 16);
    b.extend(std::iter::repeat_n(0x91, 16));
    for level in 1..5 {
        b.push(b'X');
        hessian2::write_int(&mut b, 16);
        for _ in 0..16 {
            write_ref(&mut b, level); // L(level-1) is reference `level`
        }
    }
    b.push(b'Z');
    b
}

/// Bug: the node budget was per decode call only, and copies kept in the
/// reference table were not charged, so the values after a large one could
/// each copy it again by reference: a body of N five-byte references held N
/// copies of a million nodes (gigabytes from a few hundred bytes).
#[test]
fn reference_copies_across_values_unbounded() {
    let mut stream = doubling_lists();
    let first_len = stream.len();
    for _ in 0..16 {
        write_ref(&mut stream, 5); // L4, 1.1 million nodes
    }
    let mut dec = Decoder::new();
    let Ok(Decoded::Complete { msg, consumed }) = dec.decode(&stream) else {
        panic!("the first value is within the budget")
    };
    assert_eq!(consumed, first_len);
    assert!(msg.node_count() > MAX_NODES / 4);
    drop(msg);
    let mut rest = &stream[first_len..];
    let mut copies = 0;
    let err = loop {
        match dec.decode(rest) {
            Ok(Decoded::Complete { consumed, .. }) => {
                copies += 1;
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete) => panic!("16 copies of a million nodes were all made"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::TooManyNodes { max: MAX_NODES });
    assert!(copies < 4, "{copies} copies made");

    // The same through a Dubbo request body: many arguments, each a reference.
    let mut body = Vec::new();
    for s in ["2.0.2", "p", "0.0.0", "m"] {
        hessian2::write_string(&mut body, s);
    }
    hessian2::write_string(&mut body, &"Ljava/util/List;".repeat(17));
    body.extend_from_slice(&stream);
    assert!(matches!(
        decode_request_body(dubbo::SERIALIZATION_HESSIAN2, &body),
        Err(dubbo::Error::Hessian(Error::TooManyNodes { .. }))
    ));
}
