//! Byte-level agreement with Java: Caucho hessian 4 (Debian's `libhessian-java`) on
//! the machine's JDK reads what our encoder writes from JSON and parameter types
//! (the consumer-agent's path), and writes it back; our decoder reads Java's bytes
//! back to the expected JSON.
//!
//! `tests/java/HessianHarness.java` and its POJOs (`com.example.*`) are compiled
//! with `javac` into a temporary directory and run once for all cases. Missing
//! `javac`, `java` or the jar fails the test: run `bash .ci/setup`.

use codec::hessian2::{Decoder, Encoder};
use codec::Decoded;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's libhessian-java puts its jar (`HESSIAN_JAR` overrides).
const DEFAULT_JAR: &str = "/usr/share/java/hessian.jar";
/// Caucho's reflection needs these packages open on JDK 17.
const ADD_OPENS: [&str; 3] = [
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.math",
];
/// Bound on each of javac and the harness run.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// One message: arguments (Java type, JSON) encoded with one [`Encoder`].
struct Case {
    name: &'static str,
    args: Vec<(&'static str, &'static str)>,
    /// What Java built, as the harness prints it (arguments joined by ` | `).
    java: String,
    /// Our decoding of Java's bytes, one JSON value per argument.
    back: Vec<&'static str>,
    /// Whether Java's bytes equal ours exactly (see the cases that differ).
    same_bytes: bool,
}

fn case(
    name: &'static str,
    args: &[(&'static str, &'static str)],
    java: impl Into<String>,
    back: &[&'static str],
    same_bytes: bool,
) -> Case {
    Case {
        name,
        args: args.to_vec(),
        java: java.into(),
        back: back.to_vec(),
        same_bytes,
    }
}

/// A string as the harness prints it: `String:"..."`, with every UTF-16 unit
/// outside printable ASCII (and `\`, `"`) as `\uXXXX`.
fn jstr(s: &str) -> String {
    let mut out = String::from("String:\"");
    for u in s.encode_utf16() {
        match u {
            0x20..=0x7e if u != u16::from(b'\\') && u != u16::from(b'"') => {
                out.push(char::from(u as u8))
            }
            _ => out.push_str(&format!("\\u{u:04x}")),
        }
    }
    out.push('"');
    out
}

const SHAPE_JSON: &str = r#"{"id":7,"size":5,"name":"sq","weight":2,
    "color":{"class":"com.example.Color","name":"BLUE"},
    "created":"2018-06-01T12:00:00.123Z","tags":["a",1],
    "origin":{"class":"com.example.Point","x":1,"y":-2},"extra":{"k":"v"},
    "price":{"class":"java.math.BigDecimal","value":"9.99"}}"#;
const SHAPE_JAVA: &str = r#"com.example.Shape{id=int:7, size=long:5, name=String:"sq", weight=double:2.0, color=com.example.Color.BLUE, created=Date:1527854400123, tags=java.util.ArrayList[String:"a", Integer:1], origin=com.example.Point{x=int:1, y=int:-2}, extra=java.util.HashMap{String:"k"=String:"v"}, price=BigDecimal:9.99}"#;
const SHAPE_BACK: &str = r#"{"class":"com.example.Shape","id":7,"size":5,"name":"sq","weight":2.0,
    "color":{"class":"com.example.Color","name":"BLUE"},
    "created":"2018-06-01T12:00:00.123Z","tags":["a",1],
    "origin":{"class":"com.example.Point","x":1,"y":-2},"extra":{"k":"v"},"price":9.99}"#;

fn cases() -> Vec<Case> {
    // A pair ending the first 0x8000-unit chunk, then one that would straddle it.
    let long_text: &'static str =
        Box::leak(format!("{}😀é{}", "a".repeat(0x7ffe), "b".repeat(0x8000)).into_boxed_str());
    let straddling: &'static str = Box::leak(format!("{}😀c", "a".repeat(0x7fff)).into_boxed_str());
    let json = |s: &str| -> &'static str {
        Box::leak(Json::String(s.to_owned()).to_string().into_boxed_str())
    };
    let (long_json, straddling_json) = (json(long_text), json(straddling));
    vec![
        case(
            "int long boolean double",
            &[
                ("int", "7"),
                ("int", "-2147483648"),
                ("long", "4294967296"),
                ("long", "9223372036854775807"),
                ("boolean", "true"),
                ("double", "2.5"),
                ("double", "0.001"),
                ("double", "1e300"),
            ],
            "Integer:7 | Integer:-2147483648 | Long:4294967296 | Long:9223372036854775807 \
             | Boolean:true | Double:2.5 | Double:0.001 | Double:1.0E300",
            &[
                "7",
                "-2147483648",
                "4294967296",
                "9223372036854775807",
                "true",
                "2.5",
                "0.001",
                "1e300",
            ],
            true,
        ),
        // Each compact double form and its edges.
        case(
            "doubles",
            &[
                ("double", "0"),
                ("double", "1"),
                ("double", "127"),
                ("double", "-129"),
                ("double", "32767"),
                ("double", "-32768"),
                ("double", "32768"),
                ("double", "0.1"),
                ("double", "2147483.647"),
                ("double", "-2147483.648"),
                ("double", "2147483.648"),
                ("double", "-1.5e-7"),
            ],
            "Double:0.0 | Double:1.0 | Double:127.0 | Double:-129.0 | Double:32767.0 \
             | Double:-32768.0 | Double:32768.0 | Double:0.1 | Double:2147483.647 \
             | Double:-2147483.648 | Double:2147483.648 | Double:-1.5E-7",
            &[
                "0.0",
                "1.0",
                "127.0",
                "-129.0",
                "32767.0",
                "-32768.0",
                "32768.0",
                "0.1",
                "2147483.647",
                "-2147483.648",
                "2147483.648",
                "-1.5e-7",
            ],
            true,
        ),
        case(
            "char and boxes",
            &[
                ("char", r#""x""#),
                ("java.lang.Character", r#""é""#),
                ("java.lang.Integer", "-17"),
                ("java.lang.Long", "2048"),
                ("java.lang.Boolean", "false"),
                ("java.lang.Double", "-128"),
                ("java.lang.Integer", "null"),
            ],
            "Character:x | Character:\u{e9} | Integer:-17 | Long:2048 | Boolean:false \
             | Double:-128.0 | null",
            &[r#""x""#, r#""é""#, "-17", "2048", "false", "-128.0", "null"],
            true,
        ),
        // Caucho writes a Short, Byte or Float as an object (ShortHandle, ...),
        // where Dubbo's hessian-lite writes an int or a double as we do.
        case(
            "short byte float",
            &[
                ("short", "-3"),
                ("java.lang.Short", "32767"),
                ("byte", "100"),
                ("java.lang.Byte", "-128"),
                ("float", "1.5"),
                ("java.lang.Float", "1.1"),
            ],
            "Short:-3 | Short:32767 | Byte:100 | Byte:-128 | Float:1.5 | Float:1.1",
            &["-3", "32767", "100", "-128", "1.5", "1.1"],
            false,
        ),
        case(
            "strings",
            &[
                ("java.lang.String", r#""hello""#),
                ("java.lang.String", r#""""#),
                ("java.lang.String", r#""a😀b é ü 中""#),
                ("java.lang.String", r#""\u0000\n\"\\""#),
            ],
            format!(
                "{} | {} | {} | {}",
                jstr("hello"),
                jstr(""),
                jstr("a😀b é ü 中"),
                jstr("\0\n\"\\")
            ),
            &[
                r#""hello""#,
                r#""""#,
                r#""a😀b é ü 中""#,
                r#""\u0000\n\"\\""#,
            ],
            true,
        ),
        // Chunks of 0x8000 units, one less where a surrogate pair would be cut.
        case(
            "long strings",
            &[
                ("java.lang.String", long_json),
                ("java.lang.String", straddling_json),
            ],
            format!("{} | {}", jstr(long_text), jstr(straddling)),
            &[long_json, straddling_json],
            true,
        ),
        case(
            "BigDecimal",
            &[
                ("java.math.BigDecimal", "1.50"),
                ("java.math.BigDecimal", r#""-1E+10""#),
                (
                    "java.math.BigDecimal",
                    "123456789012345678901234567890.123456789",
                ),
                ("java.math.BigDecimal", "0"),
                ("java.math.BigDecimal", r#""1e-7""#),
            ],
            "BigDecimal:1.50 | BigDecimal:-1E+10 \
             | BigDecimal:123456789012345678901234567890.123456789 | BigDecimal:0 \
             | BigDecimal:1E-7",
            &[
                "1.50",
                "-1E+10",
                "123456789012345678901234567890.123456789",
                "0",
                "1E-7",
            ],
            true, // "1e-7" is sent as Java's text, "1E-7"
        ),
        case(
            "BigDecimal as Dubbo writes it",
            &[("java.math.BigDecimal", r#""3.14159""#)],
            "BigDecimal:3.14159",
            &["3.14159"],
            true,
        ),
        // Java also writes BigInteger's cache fields (bitCountPlusOne, ...).
        case(
            "BigInteger",
            &[
                ("java.math.BigInteger", "123"),
                (
                    "java.math.BigInteger",
                    r#""-123456789012345678901234567890""#,
                ),
                ("java.math.BigInteger", "0"),
                ("java.math.BigInteger", "18446744073709551616"),
                ("java.math.BigInteger", r#""-4294967295""#),
            ],
            "BigInteger:123 | BigInteger:-123456789012345678901234567890 | BigInteger:0 \
             | BigInteger:18446744073709551616 | BigInteger:-4294967295",
            &[
                "123",
                "-123456789012345678901234567890",
                "0",
                "18446744073709551616",
                "-4294967295",
            ],
            false,
        ),
        case(
            "Date",
            &[
                ("java.util.Date", "1527854400123"),
                ("java.util.Date", r#""2018-06-01T20:00:00+08:00""#),
                ("java.util.Date", r#""1969-12-31T23:59:59.999Z""#),
                ("java.util.Date", r#""2018-06-01""#),
            ],
            "Date:1527854400123 | Date:1527854400000 | Date:-1 | Date:1527811200000",
            &[
                r#""2018-06-01T12:00:00.123Z""#,
                r#""2018-06-01T12:00:00.000Z""#,
                r#""1969-12-31T23:59:59.999Z""#,
                r#""2018-06-01T00:00:00.000Z""#,
            ],
            true,
        ),
        case(
            "enum both forms",
            &[
                ("com.example.Color", r#""RED""#),
                ("com.example.Color", r#"{"name":"GREEN"}"#),
            ],
            "com.example.Color.RED | com.example.Color.GREEN",
            &[
                r#"{"class":"com.example.Color","name":"RED"}"#,
                r#"{"class":"com.example.Color","name":"GREEN"}"#,
            ],
            true,
        ),
        case(
            "arrays",
            &[
                ("int[]", "[1,2,3]"),
                ("java.lang.String[]", r#"["a",null,"😀"]"#),
                ("java.lang.Object[]", r#"[1,"a",null,2.5,true]"#),
                ("java.lang.Integer[]", "[1,null]"),
                ("int[][]", "[[1],[2,3]]"),
                ("long[]", "[1,-9]"),
                ("double[]", "[0.5]"),
                ("boolean[]", "[true,false]"),
                ("java.util.Date[]", "[0]"),
                ("char[]", r#""ab""#),
                ("byte[]", r#""AAH/""#),
            ],
            format!(
                "int[][Integer:1, Integer:2, Integer:3] \
                 | java.lang.String[][String:\"a\", null, {}] \
                 | java.lang.Object[][Integer:1, String:\"a\", null, Double:2.5, Boolean:true] \
                 | java.lang.Integer[][Integer:1, null] \
                 | [I[][int[][Integer:1], int[][Integer:2, Integer:3]] \
                 | long[][Long:1, Long:-9] | double[][Double:0.5] \
                 | boolean[][Boolean:true, Boolean:false] | java.util.Date[][Date:0] \
                 | char[][Character:a, Character:b] | byte[][Byte:0, Byte:1, Byte:-1]",
                jstr("😀")
            ),
            &[
                "[1,2,3]",
                r#"["a",null,"😀"]"#,
                r#"[1,"a",null,2.5,true]"#,
                "[1,null]",
                "[[1],[2,3]]",
                "[1,-9]",
                "[0.5]",
                "[true,false]",
                r#"["1970-01-01T00:00:00.000Z"]"#,
                r#""ab""#,
                r#""AAH/""#,
            ],
            true,
        ),
        case(
            "List",
            &[
                ("java.util.List", r#"["a",1,true,null,[2],{"k":3}]"#),
                ("java.util.ArrayList", "[]"),
                ("java.util.LinkedList", "[1,2]"),
            ],
            "java.util.ArrayList[String:\"a\", Integer:1, Boolean:true, null, \
             java.util.ArrayList[Integer:2], java.util.HashMap{String:\"k\"=Integer:3}] \
             | java.util.ArrayList[] | java.util.LinkedList[Integer:1, Integer:2]",
            &[r#"["a",1,true,null,[2],{"k":3}]"#, "[]", "[1,2]"],
            true,
        ),
        case(
            "Set",
            &[
                ("java.util.Set", "[3,1,2]"),
                ("java.util.HashSet", r#"["x"]"#),
                ("java.util.LinkedHashSet", r#"["b","a"]"#),
            ],
            "java.util.HashSet[Integer:1, Integer:2, Integer:3] \
             | java.util.HashSet[String:\"x\"] \
             | java.util.LinkedHashSet[String:\"b\", String:\"a\"]",
            &["[1,2,3]", r#"["x"]"#, r#"["b","a"]"#],
            false, // a HashSet iterates 1, 2, 3
        ),
        case(
            "SortedSet",
            &[("java.util.SortedSet", "[3,1,2]")],
            "java.util.TreeSet[Integer:1, Integer:2, Integer:3]",
            &["[1,2,3]"],
            false,
        ),
        case(
            "Map string and int keys",
            &[
                ("java.util.Map", r#"{"a":1,"b":"x","c":null}"#),
                ("java.util.Map", r#"[[1,"one"],[2,"two"]]"#),
                ("java.util.HashMap", r#"[[9223372036854775807,true]]"#),
                ("java.util.LinkedHashMap", r#"{"z":1,"a":2}"#),
                ("java.util.Map", "{}"),
            ],
            "java.util.HashMap{String:\"a\"=Integer:1, String:\"b\"=String:\"x\", \
             String:\"c\"=null} \
             | java.util.HashMap{Integer:1=String:\"one\", Integer:2=String:\"two\"} \
             | java.util.HashMap{Long:9223372036854775807=Boolean:true} \
             | java.util.LinkedHashMap{String:\"z\"=Integer:1, String:\"a\"=Integer:2} \
             | java.util.HashMap{}",
            &[
                r#"{"a":1,"b":"x","c":null}"#,
                r#"[[1,"one"],[2,"two"]]"#,
                r#"[[9223372036854775807,true]]"#,
                r#"{"z":1,"a":2}"#,
                "{}",
            ],
            true,
        ),
        // A JSON int for the long and double fields: Java reads them as such and
        // writes a long and a double back.
        case(
            "POJO",
            &[("com.example.Shape", SHAPE_JSON)],
            SHAPE_JAVA,
            &[SHAPE_BACK],
            false,
        ),
        case(
            "POJO typed by class, twice in one message",
            &[
                (
                    "java.lang.Object",
                    r#"{"class":"com.example.Point","x":1,"y":2}"#,
                ),
                ("com.example.Point", r#"{"x":3,"y":4}"#),
                (
                    "java.lang.Object",
                    r#"{"class":"com.example.Point","x":5,"y":6}"#,
                ),
            ],
            "com.example.Point{x=int:1, y=int:2} | com.example.Point{x=int:3, y=int:4} \
             | com.example.Point{x=int:5, y=int:6}",
            &[
                r#"{"class":"com.example.Point","x":1,"y":2}"#,
                r#"{"class":"com.example.Point","x":3,"y":4}"#,
                r#"{"class":"com.example.Point","x":5,"y":6}"#,
            ],
            true,
        ),
        // A nested POJO without "class" is a map; Java fills the field from it.
        case(
            "nested POJO as a map, missing fields",
            &[(
                "com.example.Shape",
                r#"{"id":1,"origin":{"x":8,"y":9},"created":null}"#,
            )],
            "com.example.Shape{id=int:1, size=long:0, name=null, weight=double:0.0, \
             color=null, created=null, tags=null, origin=com.example.Point{x=int:8, y=int:9}, \
             extra=null, price=null}",
            &[
                r#"{"class":"com.example.Shape","id":1,"size":0,"name":null,"weight":0.0,
                "color":null,"created":null,"tags":null,
                "origin":{"class":"com.example.Point","x":8,"y":9},"extra":null,"price":null}"#,
            ],
            false,
        ),
        case(
            "List and Map of POJOs",
            &[
                (
                    "java.util.List",
                    r#"[{"class":"com.example.Point","x":1,"y":2},
                        {"class":"com.example.Point","x":3,"y":4}]"#,
                ),
                (
                    "java.util.Map",
                    r#"{"p":{"class":"com.example.Point","x":5,"y":6},"q":null}"#,
                ),
            ],
            "java.util.ArrayList[com.example.Point{x=int:1, y=int:2}, \
             com.example.Point{x=int:3, y=int:4}] \
             | java.util.HashMap{String:\"p\"=com.example.Point{x=int:5, y=int:6}, \
             String:\"q\"=null}",
            &[
                r#"[{"class":"com.example.Point","x":1,"y":2},
                    {"class":"com.example.Point","x":3,"y":4}]"#,
                r#"{"p":{"class":"com.example.Point","x":5,"y":6},"q":null}"#,
            ],
            true,
        ),
        case(
            "untyped positions: dates and big numbers",
            &[
                ("java.lang.Object", r#""2018-06-01T12:00:00.123Z""#),
                ("java.lang.Object", r#""2018-06-01T12:00:00Z""#),
                (
                    "java.util.List",
                    r#"[{"class":"java.math.BigInteger","value":"-99999999999999999999"},
                        {"class":"java.math.BigDecimal","value":1.25}]"#,
                ),
                (
                    "java.util.List",
                    r#"[{"class":"java.util.Date","value":1527854400123},
                        {"class":"java.util.Date","value":"2018-06-01 20:00+08:00"}]"#,
                ),
            ],
            "Date:1527854400123 | String:\"2018-06-01T12:00:00Z\" \
             | java.util.ArrayList[BigInteger:-99999999999999999999, BigDecimal:1.25] \
             | java.util.ArrayList[Date:1527854400123, Date:1527854400000]",
            &[
                r#""2018-06-01T12:00:00.123Z""#,
                r#""2018-06-01T12:00:00Z""#,
                "[-99999999999999999999,1.25]",
                r#"["2018-06-01T12:00:00.123Z","2018-06-01T12:00:00.000Z"]"#,
            ],
            false,
        ),
        case(
            "null",
            &[
                ("java.lang.String", "null"),
                ("com.example.Shape", "null"),
                ("java.util.List", "null"),
                ("java.util.Map", "null"),
                ("java.math.BigDecimal", "null"),
                ("java.util.Date", "null"),
                ("int[]", "null"),
            ],
            "null | null | null | null | null | null | null",
            &["null", "null", "null", "null", "null", "null", "null"],
            true,
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the harness"))
        .collect()
}

/// Our bytes for a case: its arguments with one encoder, as the consumer-agent does.
fn encode(c: &Case) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    for (t, j) in &c.args {
        let j: Json = serde_json::from_str(j).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        enc.encode_json_arg(t, &j, &mut out)
            .unwrap_or_else(|e| panic!("{}: encoding {t} {j}: {e}", c.name));
    }
    out
}

/// Decode `n` values from Java's bytes with one decoder and render them.
fn decode_back(name: &str, bytes: &[u8], n: usize) -> Vec<Json> {
    let mut dec = Decoder::new();
    let mut pos = 0;
    let mut out = Vec::new();
    for _ in 0..n {
        match dec.decode(&bytes[pos..]) {
            Ok(Decoded::Complete { msg, consumed }) => {
                out.push(msg.to_json());
                pos += consumed;
            }
            other => panic!("{name}: decoding Java's {}: {other:?}", hex(bytes)),
        }
    }
    assert_eq!(pos, bytes.len(), "{name}: bytes left in Java's answer");
    out
}

/// Removes the harness's temporary directory however the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `cmd` with `input` on stdin; its stdout, or a panic naming `what` if it
/// fails or outlasts [`STEP_LIMIT`].
fn run(what: &str, cmd: &mut Command, input: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); run `bash .ci/setup`"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + STEP_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: no answer within {STEP_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer
        .join()
        .expect("writer")
        .expect("writing to the harness");
    let out = reader.join().expect("reader").expect("harness output");
    let err = err_reader.join().expect("stderr reader");
    assert!(status.success(), "{what} failed ({status}):\n{err}\n{out}");
    out
}

/// Compile the harness; the classpath to run it with.
fn build_harness(dir: &Path) -> String {
    let jar = std::env::var("HESSIAN_JAR").unwrap_or_else(|_| DEFAULT_JAR.to_owned());
    assert!(
        Path::new(&jar).is_file(),
        "{jar} is missing: install libhessian-java (run `bash .ci/setup`)"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java");
    let mut files = vec![src.join("HessianHarness.java")];
    for entry in std::fs::read_dir(src.join("com/example")).expect("tests/java/com/example") {
        files.push(entry.expect("dir entry").path());
    }
    run(
        "javac (JDK with javac needed: run `bash .ci/setup`)",
        Command::new("javac")
            .arg("-nowarn")
            .arg("-d")
            .arg(dir)
            .arg("-cp")
            .arg(&jar)
            .args(&files),
        b"",
    );
    format!("{jar}:{}", dir.display())
}

#[test]
fn java_reads_our_bytes_and_we_read_javas() {
    let dir = TempDir(std::env::temp_dir().join(format!("java-hessian-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let classpath = build_harness(&dir.0);

    let cases = cases();
    let mut input = String::new();
    for c in &cases {
        let types: Vec<&str> = c.args.iter().map(|(t, _)| *t).collect();
        input.push_str(&format!(
            "{}\t{}\t{}\n",
            c.name,
            types.join(","),
            hex(&encode(c))
        ));
    }
    let mut java = Command::new("java");
    for pkg in ADD_OPENS {
        java.arg("--add-opens").arg(format!("{pkg}=ALL-UNNAMED"));
    }
    java.arg("-cp").arg(&classpath).arg("HessianHarness");
    let output = run("java HessianHarness", &mut java, input.as_bytes());

    let answers: HashMap<&str, (&str, &str)> = output
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '\t');
            Some((p.next()?, (p.next()?, p.next().unwrap_or(""))))
        })
        .collect();
    let mut failures = Vec::new();
    for c in &cases {
        let Some(&(java_saw, java_hex)) = answers.get(c.name) else {
            failures.push(format!("{}: no answer from Java", c.name));
            continue;
        };
        if java_saw != c.java {
            failures.push(format!(
                "{}: Java read\n    {java_saw}\n  expected\n    {}",
                c.name, c.java
            ));
            continue;
        }
        let ours = hex(&encode(c));
        if c.same_bytes && java_hex != ours {
            failures.push(format!(
                "{}: bytes differ\n  ours {ours}\n  Java {java_hex}",
                c.name
            ));
        }
        let back = decode_back(c.name, &unhex(java_hex), c.args.len());
        let want: Vec<Json> = c
            .back
            .iter()
            .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("{}: {e}", c.name)))
            .collect();
        if back != want {
            failures.push(format!(
                "{}: read back\n    {}\n  expected\n    {}",
                c.name,
                Json::Array(back),
                Json::Array(want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn class_definitions_are_written_once_per_message() {
    let c = case(
        "two shapes",
        &[
            ("com.example.Shape", SHAPE_JSON),
            ("com.example.Shape", SHAPE_JSON),
        ],
        "",
        &[],
        false,
    );
    let bytes = encode(&c);
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(b"com.example.Shape"), 1);
    assert_eq!(count(b"com.example.Point"), 1);
    assert_eq!(count(b"com.example.Color"), 1);
    assert_eq!(count(b"java.math.BigDecimal"), 1);
}
