//! Tidy: the README's example is `examples/quickstart.rs`, character for character.

#[test]
fn readme_example_is_the_quickstart_example() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/quickstart.rs");
    // The file's `//!` line documents the example target; the README says it in prose.
    let body: String = example
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let block = readme
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("README.md has a ```rust block");
    assert!(
        block == body,
        "README.md's rust block and crates/chronik-cli/examples/quickstart.rs differ: \
         copy the example into README.md"
    );
}
