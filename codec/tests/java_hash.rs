//! Java's `String.hashCode`, checked against values computed by a JVM.

use codec::java::string_hash_code;

#[test]
fn known_values() {
    assert_eq!(string_hash_code(""), 0);
    assert_eq!(string_hash_code("a"), 97);
    assert_eq!(string_hash_code("hello"), 99162322);
    assert_eq!(string_hash_code("Hello, World!"), 1498789909);
    // Overflow wraps like Java's int arithmetic.
    assert_eq!(string_hash_code("polygenelubricants"), i32::MIN);
    assert_eq!(
        string_hash_code("com.alibaba.dubbo.performance.demo.provider.IHelloService"),
        {
            let mut h = 0i32;
            for u in "com.alibaba.dubbo.performance.demo.provider.IHelloService".encode_utf16() {
                h = h.wrapping_mul(31).wrapping_add(i32::from(u));
            }
            h
        }
    );
}

#[test]
fn non_bmp_counts_two_units() {
    // "😀" is U+1F600 = surrogates d83d de00: 31 * 0xd83d + 0xde00.
    assert_eq!(string_hash_code("😀"), 31 * 0xd83d + 0xde00);
    assert_eq!(string_hash_code("😀"), 1772899);
    // "é" (U+00E9) is one unit.
    assert_eq!(string_hash_code("é"), 0xe9);
    assert_eq!(string_hash_code("a😀"), 97 * 31 * 31 + 31 * 0xd83d + 0xde00);
}
