//! The conformance suite on the in-memory adapter.

use chronik_memory::MemoryStore;

macro_rules! memory_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            chronik_testkit::conformance::$case(MemoryStore::new()).await;
        }
    )*};
}

chronik_testkit::conformance_cases!(memory_cases);
