//! proptest strategies.
