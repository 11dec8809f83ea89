//! The `chronik` binary lives in `src/main.rs`; this library target holds no code.
