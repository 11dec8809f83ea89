//! The `chronik` binary lives in `src/main.rs`; this library target holds no code.
//!
//! It exists so that the example in the workspace's `README.md`, included below, is compiled
//! and run by `cargo test` as a doctest and cannot rot.
#![doc = include_str!("../../../README.md")]
