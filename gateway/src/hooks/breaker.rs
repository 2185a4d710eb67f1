//! Suspects and quarantine: what the gateway does about a plugin that keeps
//! failing for a tenant.
//!
//! Every failed call (trap, timeout, fuel, memory, bad output) already costs
//! the gateway up to the plugin's whole budget. When one tenant's calls to a
//! plugin fail again and again (at least `failures` failed calls, and at
//! least `failure_ratio` of its calls, within one `window_ms`), the plugin is
//! skipped for that tenant for `cooldown_ms`: its calls get the plugin's
//! `on_error` outcome at once, without running wasm. After the cool-down the
//! plugin runs again on probation: one more failure within the window trips
//! it again.
//!
//! Before that, a tenant for whom at least `failure_ratio` of the window's
//! calls to the plugin failed is a **suspect**: its calls run on a thread of
//! their own at the lowest CPU priority (see `runtime::suspect_lane`), not on
//! the request workers, so the CPU it burns is only what nobody else wants.
//! Suspects are tracked even with the breaker off.
//!
//! Counting per tenant keeps one tenant from switching a plugin off for the
//! others: with a fail-open validator, a quarantine for everyone would let
//! every tenant's changes through unvalidated, and with a fail-closed one it
//! would refuse everyone's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Most tenants tracked per plugin; beyond it, tenants with nothing to
/// remember (no open quarantine, window over) are forgotten first.
const MAX_TENANTS: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    calls: u32,
    failures: u32,
    open_until: Option<Instant>,
}

/// The breakers of one plugin, one per tenant that called it.
#[derive(Debug)]
pub struct Breakers {
    cfg: BreakerConfig,
    tenants: Mutex<HashMap<String, State>>,
    /// Times a tenant's breaker opened.
    pub trips: AtomicU64,
    /// Calls not made because the tenant's breaker was open.
    pub skipped: AtomicU64,
    /// How many tenants `tenants` holds, readable without the lock: 0 (no
    /// failure to remember) lets a call skip the lock and the lookup.
    tracked: AtomicUsize,
    /// Calls of suspects, offered to the low-priority lane.
    pub isolated: AtomicU64,
    /// Suspects' calls the lane did not start in time (the cores were busy),
    /// run by their caller at normal priority instead.
    pub inline: AtomicU64,
}

impl Breakers {
    /// Breakers with `cfg` (`failures = 0` turns them off).
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            tenants: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
            trips: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            isolated: AtomicU64::new(0),
            inline: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        self.cfg.failures > 0
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.cfg.window_ms)
    }

    /// Whether `tenant` may call the plugin now, and if so whether it is a
    /// suspect (in the current window, at least `failure_ratio` of its calls
    /// failed, at least one); if not, how long until it may. Failures are
    /// tracked even with the breaker off.
    ///
    /// # Errors
    /// The time left in the tenant's quarantine.
    pub fn admit(&self, tenant: &str, now: Instant) -> Result<bool, Duration> {
        if self.tracked.load(Ordering::Acquire) == 0 {
            // Nobody's calls failed lately: no lock, no lookup.
            return Ok(false);
        }
        let mut tenants = self.tenants.lock().expect("breaker lock");
        let Some(st) = tenants.get_mut(tenant) else {
            return Ok(false);
        };
        match st.open_until {
            Some(until) if now < until => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                Err(until - now)
            }
            Some(_) => {
                // Probation: one more failure in this window trips it again.
                let n = self.cfg.failures - 1;
                *st = State {
                    window_start: Some(now),
                    calls: n,
                    failures: n,
                    open_until: None,
                };
                Ok(true)
            }
            None => Ok(st.failures > 0
                && f64::from(st.failures) >= self.cfg.failure_ratio * f64::from(st.calls)
                && st.window_start.is_some_and(|w| now - w < self.window())),
        }
    }

    /// Counts a call's outcome; returns `Some((failures, calls))` when this
    /// failure opened the tenant's breaker.
    pub fn record(&self, tenant: &str, ok: bool, now: Instant) -> Option<(u32, u32)> {
        if ok && self.tracked.load(Ordering::Acquire) == 0 {
            // A success for a tenant not tracked (none is) is not remembered.
            return None;
        }
        let mut tenants = self.tenants.lock().expect("breaker lock");
        let out = self.record_locked(&mut tenants, tenant, ok, now);
        self.tracked.store(tenants.len(), Ordering::Release);
        out
    }

    fn record_locked(
        &self,
        tenants: &mut HashMap<String, State>,
        tenant: &str,
        ok: bool,
        now: Instant,
    ) -> Option<(u32, u32)> {
        if !tenants.contains_key(tenant) {
            if ok {
                // Nothing to remember about a tenant whose calls succeed.
                return None;
            }
            if tenants.len() >= MAX_TENANTS {
                let window = self.window();
                tenants.retain(|_, s| {
                    s.open_until.is_some_and(|u| now < u)
                        || s.window_start.is_some_and(|w| now - w < window)
                });
                if tenants.len() >= MAX_TENANTS {
                    return None;
                }
            }
            tenants.insert(tenant.to_owned(), State::default());
        }
        let st = tenants.get_mut(tenant).expect("inserted above");
        if st.window_start.is_none_or(|w| now - w >= self.window()) {
            st.window_start = Some(now);
            st.calls = 0;
            st.failures = 0;
        }
        st.calls = st.calls.saturating_add(1);
        if ok {
            return None;
        }
        st.failures = st.failures.saturating_add(1);
        let tripped = self.enabled()
            && st.open_until.is_none()
            && st.failures >= self.cfg.failures
            && f64::from(st.failures) >= self.cfg.failure_ratio * f64::from(st.calls);
        if !tripped {
            return None;
        }
        st.open_until = Some(now + Duration::from_millis(self.cfg.cooldown_ms));
        self.trips.fetch_add(1, Ordering::Relaxed);
        Some((st.failures, st.calls))
    }

    /// Tenants whose breaker is open now, sorted.
    pub fn open(&self, now: Instant) -> Vec<String> {
        let tenants = self.tenants.lock().expect("breaker lock");
        let mut out: Vec<String> = tenants
            .iter()
            .filter(|(_, s)| s.open_until.is_some_and(|u| now < u))
            .map(|(t, _)| t.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig {
            failures: 3,
            failure_ratio: 0.5,
            window_ms: 10_000,
            cooldown_ms: 30_000,
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn trips_after_enough_failures_and_only_for_that_tenant() {
        let b = breakers();
        let t0 = Instant::now();
        assert_eq!(b.record("a", false, t0), None);
        assert_eq!(b.record("a", false, t0 + MS), None);
        assert_eq!(b.record("a", false, t0 + 2 * MS), Some((3, 3)));
        let wait = b.admit("a", t0 + 3 * MS).unwrap_err();
        assert_eq!(wait, Duration::from_millis(30_000 - 1));
        assert!(b.admit("b", t0 + 3 * MS).is_ok());
        assert_eq!(b.open(t0 + 3 * MS), vec!["a".to_owned()]);
        assert_eq!(b.trips.load(Ordering::Relaxed), 1);
        assert_eq!(b.skipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn occasional_failures_among_successes_do_not_trip() {
        let b = breakers();
        let t0 = Instant::now();
        for i in 0..100u32 {
            // One call in five fails: 20 failures, but 20% of the calls.
            assert_eq!(b.record("a", i % 5 != 0, t0 + i * MS), None);
        }
        assert!(b.admit("a", t0 + 100 * MS).is_ok());
    }

    #[test]
    fn alternating_failures_trip() {
        let b = breakers();
        let t0 = Instant::now();
        let mut tripped = None;
        for i in 0..6u32 {
            tripped = tripped.or(b.record("a", i % 2 == 0, t0 + i * MS));
        }
        // The first success came before any failure: nothing was remembered yet.
        assert_eq!(tripped, Some((3, 5)));
    }

    #[test]
    fn failures_spread_over_windows_do_not_add_up() {
        let b = breakers();
        let t0 = Instant::now();
        let window = Duration::from_millis(10_000);
        for k in 0..5u32 {
            assert_eq!(b.record("a", false, t0 + window * k), None);
            assert_eq!(b.record("a", false, t0 + window * k + MS), None);
        }
        assert!(b.admit("a", t0 + window * 5).is_ok());
    }

    #[test]
    fn after_the_cooldown_one_failure_trips_again_and_successes_recover() {
        let b = breakers();
        let t0 = Instant::now();
        for i in 0..3u32 {
            b.record("a", false, t0 + i * MS);
        }
        let later = t0 + Duration::from_millis(30_010);
        assert!(b.admit("a", later).is_ok());
        assert_eq!(b.record("a", false, later + MS), Some((3, 3)));
        assert!(b.admit("a", later + 2 * MS).is_err());

        // Once the probation window is over, the slate is clean.
        let much_later = later + Duration::from_millis(30_010);
        assert!(b.admit("a", much_later).is_ok());
        assert_eq!(b.record("a", true, much_later + MS), None);
        let next_window = much_later + Duration::from_millis(10_010);
        assert_eq!(b.record("a", false, next_window), None);
        assert!(b.admit("a", next_window + MS).is_ok());
    }

    #[test]
    fn a_failure_makes_a_suspect_until_the_window_ends() {
        let b = breakers();
        let t0 = Instant::now();
        assert_eq!(b.admit("a", t0), Ok(false));
        b.record("a", false, t0);
        assert_eq!(b.admit("a", t0 + MS), Ok(true));
        assert_eq!(b.admit("b", t0 + MS), Ok(false));
        assert_eq!(b.admit("a", t0 + Duration::from_millis(10_001)), Ok(false));
        // A rare failure among successes does not make a suspect.
        b.record("c", false, t0);
        assert_eq!(b.admit("c", t0), Ok(true));
        b.record("c", true, t0 + MS);
        assert_eq!(b.admit("c", t0 + MS), Ok(true));
        b.record("c", true, t0 + 2 * MS);
        assert_eq!(b.admit("c", t0 + 2 * MS), Ok(false));
    }

    #[test]
    fn off_when_failures_is_zero() {
        let b = Breakers::new(BreakerConfig {
            failures: 0,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..100u32 {
            assert_eq!(b.record("a", false, t0 + i * MS), None);
        }
        assert!(b.admit("a", t0 + 100 * MS).is_ok());
    }

    #[test]
    fn tenants_whose_calls_succeed_are_not_remembered() {
        let b = breakers();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            b.record(&format!("t{i}"), true, t0);
        }
        assert!(b.tenants.lock().unwrap().is_empty());
    }
}
