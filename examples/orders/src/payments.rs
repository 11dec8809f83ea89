//! Payments and the reactor that ships paid orders: a process across two aggregates,
//! driven by the feed.
//!
//! - [`Payment`] (stream `payment-<order id>`): requested for an order's total, then
//!   received; refuses a second receipt and an amount that does not match.
//! - [`Sale`]: an order or a payment, for a checkout that changes both in one atomic
//!   append.
//! - [`ShipPaidOrders`]: a [`Projection`] that reacts to `PaymentReceived` by shipping the
//!   order ([`Repository::react`]). Delivery is at least once (the runner checkpoints after
//!   the reaction), the reaction exactly once: its events have ids derived from the
//!   payment event, so a redelivery finds them and does nothing. The ship command's events
//!   carry the payment's correlation id and the payment event as their causation, so
//!   `chronik trace` shows payment and shipment as one chain.

use async_trait::async_trait;
use chronik::projections::decode_recorded;
use chronik::{
    Aggregate, DomainEvent, EventStore, FeedFilter, HandlerError, Projection, ReactOutcome,
    RecordedEvent, Repository, RepositoryError, StreamId,
};
use serde::{Deserialize, Serialize};

use crate::{Order, OrderCommand, OrderError};

/// A payment's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payment {
    /// The order it pays (empty until requested).
    pub order_id: String,
    /// Cents requested.
    pub amount: i64,
    /// Whether it was received.
    pub received: bool,
}

/// Commands a payment accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Ask for `amount` cents for order `order_id`.
    Request {
        /// The order's id (its stream is `order-<order_id>`).
        order_id: String,
        /// Cents (> 0).
        amount: i64,
    },
    /// The money came in.
    Receive {
        /// Cents: must equal the requested amount.
        amount: i64,
    },
}

/// Events of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    /// Payment was asked for.
    PaymentRequested {
        /// The order's id.
        order_id: String,
        /// Cents.
        amount: i64,
    },
    /// Payment arrived.
    PaymentReceived {
        /// The order's id.
        order_id: String,
        /// Cents.
        amount: i64,
    },
}

/// A command a payment refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// Requested twice.
    #[error("the payment was already requested")]
    AlreadyRequested,
    /// Received before it was requested.
    #[error("no payment was requested")]
    NotRequested,
    /// Received twice.
    #[error("the payment was already received")]
    AlreadyReceived,
    /// Another amount than requested.
    #[error("received {received} cents, {requested} were requested")]
    WrongAmount {
        /// Requested.
        requested: i64,
        /// Received.
        received: i64,
    },
    /// A field out of range.
    #[error("invalid: {0}")]
    Invalid(&'static str),
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn handle(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::Request { .. } if !self.order_id.is_empty() => {
                Err(PaymentError::AlreadyRequested)
            }
            PaymentCommand::Request { amount, .. } if *amount <= 0 => {
                Err(PaymentError::Invalid("an amount must be positive"))
            }
            PaymentCommand::Request { order_id, .. } if order_id.trim().is_empty() => {
                Err(PaymentError::Invalid("the order id is empty"))
            }
            PaymentCommand::Request { order_id, amount } => {
                Ok(vec![PaymentEvent::PaymentRequested {
                    order_id: order_id.clone(),
                    amount: *amount,
                }])
            }
            PaymentCommand::Receive { .. } if self.order_id.is_empty() => {
                Err(PaymentError::NotRequested)
            }
            PaymentCommand::Receive { .. } if self.received => Err(PaymentError::AlreadyReceived),
            PaymentCommand::Receive { amount } if *amount != self.amount => {
                Err(PaymentError::WrongAmount {
                    requested: self.amount,
                    received: *amount,
                })
            }
            PaymentCommand::Receive { amount } => Ok(vec![PaymentEvent::PaymentReceived {
                order_id: self.order_id.clone(),
                amount: *amount,
            }]),
        }
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentRequested { order_id, amount } => {
                self.order_id.clone_from(order_id);
                self.amount = *amount;
            }
            PaymentEvent::PaymentReceived { .. } => self.received = true,
        }
    }
}

/// An order or a payment: the aggregate of a checkout, which places orders and requests
/// their payments in one atomic append across all their streams
/// (`Repository::<Sale, _>::execute_all` with `Either::First(OrderCommand::Place { .. })` on
/// `order-<id>` and `Either::Second(PaymentCommand::Request { .. })` on `payment-<id>`).
/// The streams keep their own events: `Repository<Order, _>` and `Repository<Payment, _>`
/// read them as before.
pub type Sale = chronik::OneOf<Order, Payment>;

/// The reactor's name: its checkpoint, and part of its reactions' event ids.
pub const SHIP_PAID_ORDERS: &str = "ship-paid-orders";

/// Ships an order when its payment is received, exactly once per payment.
///
/// A refusal by the order is not retried: a cancelled order is not shipped, and an order
/// already shipped by hand stays as it is (both are logged and the trigger is passed).
pub struct ShipPaidOrders<S> {
    orders: Repository<Order, S>,
    carrier: String,
}

impl<S> std::fmt::Debug for ShipPaidOrders<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipPaidOrders")
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> ShipPaidOrders<S> {
    /// Ships through `orders`, with `carrier`.
    pub fn new(orders: Repository<Order, S>, carrier: impl Into<String>) -> Self {
        Self {
            orders,
            carrier: carrier.into(),
        }
    }

    /// Reacts to one event: ships the order of a `PaymentReceived`, ignores the rest.
    ///
    /// # Errors
    /// A failure to decode the event, a stream id that cannot be built, or a store error
    /// (retried by the runner, which redelivers the event: the reaction stays exactly once).
    pub async fn react(&self, event: &RecordedEvent) -> Result<ReactOutcome, HandlerError> {
        let PaymentEvent::PaymentReceived { order_id, .. } =
            decode_recorded::<PaymentEvent>(event)?
        else {
            return Ok(ReactOutcome::Nothing);
        };
        let order: StreamId = Order::stream_id(&order_id).map_err(HandlerError::from_error)?;
        let ship = OrderCommand::Ship {
            carrier: self.carrier.clone(),
        };
        match self
            .orders
            .react(&order, ship, event, SHIP_PAID_ORDERS)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(RepositoryError::Domain(
                e
                @ (OrderError::ShipCancelled | OrderError::AlreadyShipped | OrderError::NotPlaced),
            )) => {
                tracing::info!(%order, error = %e, "paid order not shipped");
                Ok(ReactOutcome::Nothing)
            }
            Err(e) => Err(HandlerError::from_error(e)),
        }
    }
}

#[async_trait]
impl<S: EventStore + 'static> Projection for ShipPaidOrders<S> {
    fn name(&self) -> &str {
        SHIP_PAID_ORDERS
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: vec!["PaymentReceived".to_owned()],
            categories: vec![Payment::TYPE.to_owned()],
        }
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.react(event).await.map(|_| ())
    }

    /// Reactions are never undone: a rebuild replays the feed, and every reaction already
    /// carried out is found and skipped.
    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}
