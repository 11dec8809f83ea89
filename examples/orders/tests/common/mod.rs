//! proptest strategies for Orders histories, shared by the test binaries.
#![allow(dead_code, unreachable_pub)]

use chronik::testkit::strategies::history;
use orders::{Order, OrderCommand, OrderEvent};
use proptest::prelude::*;

/// Order commands, valid or not: the aggregate decides.
pub fn order_command() -> impl Strategy<Value = OrderCommand> {
    prop_oneof![
        1 => ("[a-z]{0,4}", -5..10_000i64).prop_map(|(c, a)| OrderCommand::Place { customer_id: c, total_amount: a }),
        6 => ("[a-z]{0,3}", 0..5u32, -2..500i64).prop_map(|(sku, quantity, unit_price)| OrderCommand::AddLine { sku, quantity, unit_price }),
        1 => "[a-z]{0,3}".prop_map(|carrier| OrderCommand::Ship { carrier }),
        1 => "[a-z]{0,3}".prop_map(|reason| OrderCommand::Cancel { reason }),
    ]
}

/// A history the Orders aggregate really produces: commands folded through `handle`,
/// refused ones dropped. Starts with a placement so histories are rarely empty.
pub fn order_history(max_commands: usize) -> impl Strategy<Value = Vec<OrderEvent>> {
    let place = OrderCommand::Place {
        customer_id: "c".into(),
        total_amount: 100,
    };
    history::<Order>(
        prop::collection::vec(order_command(), 0..max_commands)
            .prop_map(move |commands| std::iter::once(place.clone()).chain(commands).collect()),
    )
}
