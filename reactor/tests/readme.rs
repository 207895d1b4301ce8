//! The README's echo example is `examples/echo.rs`, word for word (less the file's
//! module docs), so the two cannot drift apart.

#[test]
fn the_readme_echo_example_is_examples_echo() {
    let readme = include_str!("../README.md");
    let echo = include_str!("../examples/echo.rs");
    let block = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("a rust code block in README.md");
    let (_docs, code) = echo.split_once("\n\n").expect("module docs, then code");
    assert_eq!(
        block, code,
        "README.md's echo differs from examples/echo.rs"
    );
}
