//! chronik-projections
