//! Laws of the Orders aggregate, of snapshots and of the repository's cache, on the
//! in-memory adapter.

use chronik::Aggregate;
use chronik::MemoryStore;
use chronik::testkit::strategies::{
    cached_command_ops, check_cached_commands_decide_as_on_a_fresh_load,
    check_snapshot_plus_tail_equals_replay,
};
use orders::Order;
mod common;

use common::{order_command, order_history};
use proptest::prelude::*;

proptest! {
    /// Replay is a left fold: replaying a ++ b equals applying b onto the replay of a.
    #[test]
    fn replay_is_a_fold(history in order_history(40), split in 0..60usize) {
        let split = split.min(history.len());
        let mut state = Order::replay(&history[..split]);
        for e in &history[split..] {
            state.apply(e);
        }
        prop_assert_eq!(state, Order::replay(&history));
    }

    /// Snapshot + tail == full replay, for random histories and snapshot points.
    #[test]
    fn snapshot_plus_tail_equals_full_replay(history in order_history(60), at in 0..80usize) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(check_snapshot_plus_tail_equals_replay::<Order, _>(MemoryStore::new(), history, at));
    }

    /// Commands through cached repositories decide as on a fresh load, whoever else writes.
    #[test]
    fn cached_commands_decide_as_on_a_fresh_load(ops in cached_command_ops(order_command(), 60)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(check_cached_commands_decide_as_on_a_fresh_load::<Order, _>(MemoryStore::new(), ops));
    }
}
