//! The fixture of the typed-projection tests every engine has (the generic runner's
//! [`TypedProjection`](chronik_projections::TypedProjection), PostgreSQL's typed read
//! models): [`Stock`] events of the `item` category whose `Received` is at schema version
//! 2, and the [`stock_upcasters`] that read its version 1. Append them as stored at any
//! version with [`event_at`](crate::conformance::event_at).

use chronik_core::{DomainEvent, UpcasterRegistry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stock movements of an item (streams `item-...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
pub enum Stock {
    /// Goods arrived. Version 1 called the quantity `qty` ([`stock_upcasters`]).
    #[event(schema_version = 2)]
    Received {
        /// The item's article.
        sku: String,
        /// How many.
        quantity: i64,
    },
    /// Goods left.
    Shipped {
        /// The item's article.
        sku: String,
        /// How many.
        quantity: i64,
    },
}

/// Upcasts `Received` version 1 (`qty`) to version 2 (`quantity`); `Shipped` is at 1.
///
/// # Panics
/// Never: the registry is valid.
#[must_use]
pub fn stock_upcasters() -> UpcasterRegistry {
    UpcasterRegistry::builder()
        .current("Received", 2)
        .step("Received", 1, |mut p: Value| {
            let q = p["qty"].take();
            p["quantity"] = q;
            Ok(p)
        })
        .current("Shipped", 1)
        .build()
        .expect("valid upcasters")
}
