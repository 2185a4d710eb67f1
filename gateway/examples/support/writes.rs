//! What the stall examples (`sweep_stall`, `outbox_claim`) share: sequential
//! metadata writes, timed, and their summary.
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::metadata::MetadataChange;
use gateway::model::Tenant;
use gateway::store::SessionStore;
use serde_json::json;

/// p50, p99 and max of `lat` (µs), and how many.
pub fn summary(mut lat: Vec<u128>) -> String {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    format!(
        "{} writes, p50 {} µs, p99 {} µs, max {} µs",
        lat.len(),
        at(0.5),
        at(0.99),
        lat[lat.len() - 1]
    )
}

/// Sequential metadata writes to session `s0` for `secs`; their latencies (µs).
pub async fn writes(store: &Arc<dyn SessionStore>, t: &Tenant, secs: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut lat = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let change = MetadataChange::Update(vec![("n".into(), json!(n))]);
        let t0 = Instant::now();
        store
            .change_metadata(t, "s0", &change)
            .await
            .expect("write");
        lat.push(t0.elapsed().as_micros());
    }
    lat
}
