//! The Orders example domain: placing, adding lines, shipping and cancelling orders.
//!
//! Business rules: an order is placed once, with a non-empty customer and a positive
//! total; lines can be added only while the order is open (placed, not shipped or
//! cancelled); a cancelled order cannot be shipped; a shipped order cannot be cancelled;
//! shipping or cancelling twice is refused.
//!
//! Schema history: `OrderPlaced` v1 stored `amount`; v2 (current) stores `total_amount`
//! (the seed's upcasting example). See [`upcasters`].

use chronik::{Aggregate, DomainEvent, SnapshotState, UpcastError, UpcasterRegistry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Lifecycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet (empty stream).
    #[default]
    New,
    /// Placed, open for lines.
    Placed,
    /// Shipped.
    Shipped,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    /// The read-model label (`placed`, `shipped`, `cancelled`, `new`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Placed => "placed",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The order aggregate's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Order {
    /// Where it is in its lifecycle.
    pub status: OrderStatus,
    /// Who placed it.
    pub customer_id: String,
    /// Total in cents: the placed amount plus every line.
    pub total_amount: i64,
    /// Number of lines added.
    pub lines: u64,
    /// Carrier, once shipped.
    pub carrier: Option<String>,
}

/// Commands an order accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place the order.
    Place {
        /// Customer.
        customer_id: String,
        /// Total in cents (> 0).
        total_amount: i64,
    },
    /// Add a line while open.
    AddLine {
        /// Article.
        sku: String,
        /// How many (> 0).
        quantity: u32,
        /// Price per unit in cents (>= 0).
        unit_price: i64,
    },
    /// Ship it.
    Ship {
        /// Carrier name.
        carrier: String,
    },
    /// Cancel it.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// `OrderPlaced` payload (schema v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Customer.
    pub customer_id: String,
    /// Total in cents.
    pub total_amount: i64,
}

/// `LineAdded` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineAdded {
    /// Article.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Price per unit in cents.
    pub unit_price: i64,
}

/// `OrderShipped` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// Carrier.
    pub carrier: String,
}

/// `OrderCancelled` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Why.
    pub reason: String,
}

/// Events of an order, stored under their variant names (the derive takes them from serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    /// The order was placed.
    #[event(schema_version = 2)]
    OrderPlaced(OrderPlaced),
    /// A line was added.
    LineAdded(LineAdded),
    /// The order was shipped.
    OrderShipped(OrderShipped),
    /// The order was cancelled.
    OrderCancelled(OrderCancelled),
}

/// Current schema version of `OrderPlaced`.
pub const ORDER_PLACED_VERSION: u32 = 2;

/// A command the order refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OrderError {
    /// Placing an order that exists.
    #[error("order is already placed")]
    AlreadyPlaced,
    /// Acting on an order that was never placed.
    #[error("order has not been placed")]
    NotPlaced,
    /// Shipping a cancelled order.
    #[error("cannot ship a cancelled order")]
    ShipCancelled,
    /// Shipping twice.
    #[error("order is already shipped")]
    AlreadyShipped,
    /// Cancelling a shipped order.
    #[error("cannot cancel a shipped order")]
    CancelShipped,
    /// Cancelling twice.
    #[error("order is already cancelled")]
    AlreadyCancelled,
    /// Adding a line to a closed order.
    #[error("order is closed ({0}); no more lines")]
    Closed(&'static str),
    /// A field is out of range.
    #[error("invalid order: {0}")]
    Invalid(&'static str),
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::{Cancelled, New, Placed, Shipped};
        match (command, self.status) {
            (OrderCommand::Place { .. }, Placed | Shipped | Cancelled) => {
                Err(OrderError::AlreadyPlaced)
            }
            (
                OrderCommand::Place {
                    customer_id,
                    total_amount,
                },
                New,
            ) => {
                if customer_id.trim().is_empty() {
                    return Err(OrderError::Invalid("customer id is empty"));
                }
                if *total_amount <= 0 {
                    return Err(OrderError::Invalid("total amount must be positive"));
                }
                Ok(vec![OrderEvent::OrderPlaced(OrderPlaced {
                    customer_id: customer_id.clone(),
                    total_amount: *total_amount,
                })])
            }
            (_, New) => Err(OrderError::NotPlaced),
            (OrderCommand::AddLine { .. }, s @ (Shipped | Cancelled)) => {
                Err(OrderError::Closed(s.as_str()))
            }
            (
                OrderCommand::AddLine {
                    sku,
                    quantity,
                    unit_price,
                },
                Placed,
            ) => {
                if *quantity == 0 || *unit_price < 0 || sku.is_empty() {
                    return Err(OrderError::Invalid(
                        "a line needs a sku, a positive quantity and a non-negative price",
                    ));
                }
                i64::from(*quantity)
                    .checked_mul(*unit_price)
                    .and_then(|l| l.checked_add(self.total_amount))
                    .ok_or(OrderError::Invalid("order total overflows"))?;
                Ok(vec![OrderEvent::LineAdded(LineAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price: *unit_price,
                })])
            }
            (OrderCommand::Ship { .. }, Cancelled) => Err(OrderError::ShipCancelled),
            (OrderCommand::Ship { .. }, Shipped) => Err(OrderError::AlreadyShipped),
            (OrderCommand::Ship { carrier }, Placed) => {
                if carrier.is_empty() {
                    return Err(OrderError::Invalid("carrier is empty"));
                }
                Ok(vec![OrderEvent::OrderShipped(OrderShipped {
                    carrier: carrier.clone(),
                })])
            }
            (OrderCommand::Cancel { .. }, Shipped) => Err(OrderError::CancelShipped),
            (OrderCommand::Cancel { .. }, Cancelled) => Err(OrderError::AlreadyCancelled),
            (OrderCommand::Cancel { reason }, Placed) => {
                Ok(vec![OrderEvent::OrderCancelled(OrderCancelled {
                    reason: reason.clone(),
                })])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced(e) => {
                self.status = OrderStatus::Placed;
                self.customer_id.clone_from(&e.customer_id);
                self.total_amount = e.total_amount;
            }
            OrderEvent::LineAdded(e) => {
                self.lines += 1;
                self.total_amount = self
                    .total_amount
                    .saturating_add(i64::from(e.quantity).saturating_mul(e.unit_price));
            }
            OrderEvent::OrderShipped(e) => {
                self.status = OrderStatus::Shipped;
                self.carrier = Some(e.carrier.clone());
            }
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
        }
    }
}

impl SnapshotState for Order {
    const STATE_SCHEMA_VERSION: u32 = 1;

    fn to_state(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn from_state(state: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(state)
    }
}

/// Upcasts `OrderPlaced` v1 (`amount`) to v2 (`total_amount`).
///
/// # Errors
/// When the payload is not an object or has no `amount`.
pub fn order_placed_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let obj = payload
        .as_object_mut()
        .ok_or("OrderPlaced payload is not an object")?;
    let amount = obj
        .remove("amount")
        .ok_or("OrderPlaced v1 has no `amount`")?;
    obj.insert("total_amount".to_owned(), amount);
    Ok(payload)
}

/// The Orders upcaster registry (validated).
///
/// # Errors
/// Never for this fixed chain; the result type is the registry's.
pub fn upcasters() -> Result<UpcasterRegistry, UpcastError> {
    UpcasterRegistry::builder()
        .current("OrderPlaced", ORDER_PLACED_VERSION)
        .step("OrderPlaced", 1, order_placed_v1_to_v2)
        .current("LineAdded", 1)
        .current("OrderShipped", 1)
        .current("OrderCancelled", 1)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik::testkit::given;

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "c-1".into(),
            total_amount: 1_000,
        })
    }
    fn cancelled() -> OrderEvent {
        OrderEvent::OrderCancelled(OrderCancelled {
            reason: "changed mind".into(),
        })
    }
    fn shipped() -> OrderEvent {
        OrderEvent::OrderShipped(OrderShipped {
            carrier: "dhl".into(),
        })
    }
    fn ship() -> OrderCommand {
        OrderCommand::Ship {
            carrier: "dhl".into(),
        }
    }

    #[test]
    fn placing_a_new_order() {
        given::<Order>([])
            .when(&OrderCommand::Place {
                customer_id: "c-1".into(),
                total_amount: 1_000,
            })
            .then_expect([placed()]);
    }

    #[test]
    fn placing_twice_is_refused() {
        given::<Order>([placed()])
            .when(&OrderCommand::Place {
                customer_id: "c-1".into(),
                total_amount: 1,
            })
            .then_error(&OrderError::AlreadyPlaced);
    }

    #[test]
    fn placing_needs_customer_and_positive_total() {
        given::<Order>([])
            .when(&OrderCommand::Place {
                customer_id: " ".into(),
                total_amount: 1,
            })
            .then_error(&OrderError::Invalid("customer id is empty"));
        given::<Order>([])
            .when(&OrderCommand::Place {
                customer_id: "c".into(),
                total_amount: 0,
            })
            .then_error(&OrderError::Invalid("total amount must be positive"));
    }

    #[test]
    fn shipping_a_placed_order() {
        given::<Order>([placed()])
            .when(&ship())
            .then_expect([shipped()]);
    }

    #[test]
    fn cannot_ship_a_cancelled_order() {
        given::<Order>([placed(), cancelled()])
            .when(&ship())
            .then_error(&OrderError::ShipCancelled);
    }

    #[test]
    fn cannot_ship_twice_or_unplaced() {
        given::<Order>([placed(), shipped()])
            .when(&ship())
            .then_error(&OrderError::AlreadyShipped);
        given::<Order>([])
            .when(&ship())
            .then_error(&OrderError::NotPlaced);
    }

    #[test]
    fn cancelling_rules() {
        let cancel = OrderCommand::Cancel { reason: "r".into() };
        given::<Order>([placed()])
            .when(&cancel)
            .then_expect([OrderEvent::OrderCancelled(OrderCancelled {
                reason: "r".into(),
            })]);
        given::<Order>([placed(), shipped()])
            .when(&cancel)
            .then_error(&OrderError::CancelShipped);
        given::<Order>([placed(), cancelled()])
            .when(&cancel)
            .then_error(&OrderError::AlreadyCancelled);
    }

    #[test]
    fn lines_only_while_open() {
        let line = OrderCommand::AddLine {
            sku: "sku-1".into(),
            quantity: 2,
            unit_price: 150,
        };
        given::<Order>([placed()])
            .when(&line)
            .then_expect([OrderEvent::LineAdded(LineAdded {
                sku: "sku-1".into(),
                quantity: 2,
                unit_price: 150,
            })]);
        given::<Order>([placed(), shipped()])
            .when(&line)
            .then_error(&OrderError::Closed("shipped"));
        let overflow = OrderCommand::AddLine {
            sku: "s".into(),
            quantity: u32::MAX,
            unit_price: i64::MAX,
        };
        given::<Order>([placed()])
            .when(&overflow)
            .then_error(&OrderError::Invalid("order total overflows"));
    }

    #[test]
    fn state_is_the_fold_of_events() {
        let line = OrderEvent::LineAdded(LineAdded {
            sku: "a".into(),
            quantity: 3,
            unit_price: 10,
        });
        let order = Order::replay(&[placed(), line.clone(), line, shipped()]);
        assert_eq!(order.total_amount, 1_060);
        assert_eq!(order.lines, 2);
        assert_eq!(order.status, OrderStatus::Shipped);
        assert_eq!(order.carrier.as_deref(), Some("dhl"));
    }

    #[test]
    fn events_use_meaningful_type_names_and_round_trip() {
        for e in [placed(), shipped(), cancelled()] {
            let payload = e.to_payload().unwrap();
            assert!(payload.is_object());
            assert_eq!(
                OrderEvent::from_payload(e.event_type(), payload).unwrap(),
                e
            );
        }
        assert_eq!(placed().schema_version(), ORDER_PLACED_VERSION);
    }

    #[test]
    fn v1_order_placed_reads_through_the_upcaster() {
        let reg = upcasters().unwrap();
        let (t, v, p) = reg
            .upcast(
                "OrderPlaced",
                1,
                serde_json::json!({ "customer_id": "c-1", "amount": 1000 }),
            )
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(OrderEvent::from_payload(&t, p).unwrap(), placed());
    }
}
