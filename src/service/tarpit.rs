//! Answers held back (a tarpit) without holding capacity.
//!
//! A refusal that is held back must not sit in the server's concurrency
//! limit while it waits: a flood of known-wrong tokens would then shed good
//! calls. So a transport that limits concurrency runs each call in
//! [`deferred`], outside its limit: the call only notes how long its answer
//! is to be held back, and the wait happens after the call has given its
//! capacity back. Outside such a scope (SCIM, the library used directly) the
//! answer is held back in place.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    /// How long the answer of the call running in this scope is held back.
    static HELD_BACK: Cell<Duration>;
}

/// Holds the current call's answer back by `delay`: after the call, when it
/// runs in [`deferred`], else here and now.
pub async fn hold_back(delay: Duration) {
    let noted = HELD_BACK.try_with(|held| held.set(held.get().max(delay)));
    if noted.is_err() {
        tokio::time::sleep(delay).await;
    }
}

/// Runs `call`, then waits as long as it asked its answer to be held back.
/// `call` (and whatever capacity it holds) is dropped before the wait.
pub async fn deferred<F: Future>(call: F) -> F::Output {
    HELD_BACK
        .scope(Cell::new(Duration::ZERO), async move {
            let answer = call.await;
            let delay = HELD_BACK.with(Cell::get);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_deferred_call_finishes_before_its_answer_is_released() {
        let start = Instant::now();
        let mut call_took = Duration::MAX;
        let answer = deferred(async {
            hold_back(Duration::from_millis(50)).await;
            call_took = start.elapsed();
            7
        })
        .await;
        assert_eq!(answer, 7);
        assert!(
            call_took < Duration::from_millis(50),
            "the call itself did not wait"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "its answer did"
        );
    }

    #[tokio::test]
    async fn outside_a_scope_the_answer_waits_in_place() {
        let start = Instant::now();
        hold_back(Duration::from_millis(50)).await;
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
