//! A hook call's wall-clock budget, enforced around its future.
//!
//! Wasm runs on a fiber inside the call's future. A guest that computes
//! yields back to tokio every [`YIELD_FUEL`] units of fuel (a fraction of a
//! millisecond of guest code), so it never pins a worker, and at each of
//! those returns [`by`] reads the clock. A guest that waits in a host call
//! (a WASI clock or other pollable) burns no fuel and returns `Pending`:
//! a timer at the deadline wakes the task, and the call ends there too.
//! Either way the call's future is dropped, which unwinds the guest's
//! stack; the instance must then be discarded (the caller does).
//!
//! This replaces epoch interruption: nothing ticks while no call runs, a call
//! that returns in one poll (every ordinary hook call) reads no clock and
//! arms no timer, and a guest parked in a host call is stopped on time,
//! which epochs, checked only in wasm code, could not do.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

/// Fuel between a busy guest's yields to tokio. Fuel is about one unit per
/// wasm instruction: `fixture_loop` burns 200 million units in 30–40 ms on
/// the 2-core development machine, so 1,000,000 units are ~0.2 ms of a tight
/// loop (more for code that calls into the host). That bounds both how long
/// a call holds a worker between yields and how late past its deadline it is
/// stopped, and a yield (two fiber switches and a re-poll) is paid at most
/// every ~0.2 ms of guest time.
pub const YIELD_FUEL: u64 = 1_000_000;

/// The deadline passed before the call completed (its future is dropped).
#[derive(Debug)]
pub(super) struct TimedOut;

/// Runs `call` until it completes or `deadline` passes, whichever is first.
pub(super) async fn by<F: Future>(deadline: Instant, call: F) -> Result<F::Output, TimedOut> {
    let mut call = std::pin::pin!(call);
    // Armed only once the call has gone `Pending`.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(TimedOut));
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(TimedOut));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_done_in_time_keeps_its_answer() {
        let out = by(Instant::now() + Duration::from_secs(5), async {
            tokio::task::yield_now().await;
            7
        })
        .await;
        assert_eq!(out.unwrap(), 7);
    }

    /// A call parked on something that never wakes it (like a guest in a
    /// blocking host call) is ended by the timer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_parked_call_ends_at_its_deadline() {
        let started = Instant::now();
        let out = by(
            started + Duration::from_millis(30),
            std::future::pending::<()>(),
        )
        .await;
        assert!(out.is_err(), "{out:?}");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    /// A call that keeps yielding (like a busy guest) is ended at the first
    /// poll past its deadline.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_call_ends_at_its_deadline() {
        let started = Instant::now();
        let out = by(started + Duration::from_millis(30), async {
            loop {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(out.is_err(), "{out:?}");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
