//! The Orders example service on chronik: what a service built on the `chronik` crate
//! looks like, and the domain the stock `chronik` binary's demo runs.
//!
//! - the domain ([`Order`], [`OrderCommand`], [`OrderEvent`], [`OrderError`]): placing,
//!   adding lines, shipping and cancelling orders, as an [`Aggregate`](chronik::Aggregate);
//! - its schema history: `OrderPlaced` v1 stored `amount`, v2 stores `total_amount`
//!   ([`upcasters`]); every historical payload is kept as a golden fixture in `fixtures/`
//!   and read through the current code by `tests/golden.rs`;
//! - its read model on PostgreSQL ([`OrderProjection`], table `order_summaries`, created by
//!   [`OrderProjection::create_table`], not by chronik's migrations).
//!
//! - payments and a reactor ([`payments`]): `Payment` aggregates and [`ShipPaidOrders`],
//!   which ships an order when its payment is received, exactly once per payment.
//!
//! It depends on the `chronik` facade only, as any service would.

mod domain;
pub mod payments;
mod read_model;

pub use domain::*;
pub use payments::{Payment, PaymentCommand, PaymentError, PaymentEvent, Sale, ShipPaidOrders};
pub use read_model::{OrderProjection, OrderSummary};
