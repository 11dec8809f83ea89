//! Tidy: the README's example is `examples/quickstart.rs`, character for character, and it
//! names no chronik crate but the facade.

fn readme_block() -> &'static str {
    include_str!("../../../README.md")
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("README.md has a ```rust block")
}

#[test]
fn readme_example_is_the_quickstart_example() {
    let example = include_str!("../examples/quickstart.rs");
    // The file's `//!` lines document the example target; the README says it in prose.
    let body: String = example
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        readme_block() == body,
        "README.md's rust block and crates/chronik/examples/quickstart.rs differ: \
         copy the example into README.md"
    );
}

#[test]
fn readme_example_uses_the_facade_alone_and_no_turbofish() {
    let block = readme_block();
    for crate_name in [
        "chronik_core",
        "chronik_store",
        "chronik_memory",
        "chronik_postgres",
        "chronik_projections",
        "chronik_testkit",
    ] {
        assert!(
            !block.contains(crate_name),
            "the README example names {crate_name}: a service imports `chronik` only"
        );
    }
    assert!(
        !block.contains("::<"),
        "the README example needs no turbofish"
    );
    assert!(block.contains(".migrate()"), "the PostgreSQL path migrates");
}
