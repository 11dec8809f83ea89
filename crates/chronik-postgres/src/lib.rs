//! chronik-postgres
