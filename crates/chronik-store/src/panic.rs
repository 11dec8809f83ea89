//! Handlers are user code: a panic in one must be a failure the caller can report and
//! retry, not the end of the task that called it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

/// Polls `future` to completion, turning a panic inside it into `Err(message)` (the
/// panic's `&str` or `String` payload, else `"non-string panic"`).
///
/// Contract: the caller must treat everything `future` touched as suspect after an `Err`
/// (roll back its transaction, do not reuse its partial results): the future is treated
/// as unwind-safe because every runner discards its work on failure.
///
/// # Errors
/// The panic's message.
pub async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The message of a panic payload.
#[must_use]
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        let caught = futures::executor::block_on(catch_panic(async {
            if true {
                panic!("boom {}", 7);
            }
            1
        }));
        assert_eq!(caught, Err("boom 7".to_owned()));
        let fine = futures::executor::block_on(catch_panic(async { 2 }));
        assert_eq!(fine, Ok(2));
        let literal = std::panic::catch_unwind(|| panic!("static"));
        assert_eq!(
            literal.map_err(|p| panic_message(p.as_ref())),
            Err("static".to_owned())
        );
    }
}
