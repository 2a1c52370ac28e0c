//! Pure autoscaling: replicas from reported usage, within `[min, max]`, scaling up at
//! once and down only when every recommendation in the stabilization window agrees.

/// Kept in the App's `status.autoscale` (typed in `verge_api`).
pub use verge_api::status::app::ScaleState;

/// The raw recommendation: `ceil(current · utilization / target)`, clamped. Without
/// samples, the current count (clamped).
pub fn recommend(
    current: u32,
    usage: &[u64],
    request: u64,
    target_percent: u32,
    min: u32,
    max: u32,
) -> u32 {
    if usage.is_empty() || request == 0 || target_percent == 0 {
        return current.clamp(min, max);
    }
    let total: u128 = usage.iter().map(|u| u128::from(*u)).sum();
    // current · (total / n / request · 100) / target, in integers.
    let n = usage.len() as u128;
    let num = u128::from(current.max(1)) * total * 100;
    let den = n * u128::from(request) * u128::from(target_percent);
    let want = num.div_ceil(den);
    u32::try_from(want).unwrap_or(u32::MAX).clamp(min, max)
}

/// Applies the stabilization window and returns the new state.
pub fn stabilize(
    prev: &ScaleState,
    recommendation: u32,
    now_ms: i64,
    window_ms: i64,
) -> ScaleState {
    let mut history: Vec<(i64, u32)> = prev
        .history
        .iter()
        .copied()
        .filter(|(t, _)| now_ms - *t < window_ms)
        .collect();
    history.push((now_ms, recommendation));
    if history.len() > 64 {
        let drop = history.len() - 64;
        history.drain(..drop);
    }
    let replicas = if recommendation >= prev.replicas {
        recommendation
    } else {
        // Down only as far as the highest recent recommendation.
        history
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommendation)
    };
    ScaleState { replicas, history }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendation_follows_utilization() {
        // 2 replicas at 90% of 100m, target 50% → ceil(2·90/50) = 4.
        assert_eq!(recommend(2, &[90, 90], 100, 50, 1, 10), 4);
        // At 10%: ceil(2·10/50) = 1.
        assert_eq!(recommend(2, &[10, 10], 100, 50, 1, 10), 1);
        // Clamped.
        assert_eq!(recommend(2, &[1000, 1000], 100, 50, 1, 5), 5);
        assert_eq!(recommend(3, &[0, 0, 0], 100, 50, 2, 5), 2);
        // No samples: keep.
        assert_eq!(recommend(3, &[], 100, 50, 1, 5), 3);
    }

    #[test]
    fn scale_up_at_once_down_after_the_window() {
        let s0 = ScaleState {
            replicas: 2,
            history: vec![],
        };
        let s1 = stabilize(&s0, 4, 0, 60_000);
        assert_eq!(s1.replicas, 4);
        let s2 = stabilize(&s1, 1, 30_000, 60_000);
        assert_eq!(s2.replicas, 4, "a recent higher recommendation holds");
        let s3 = stabilize(&s2, 1, 61_000, 60_000);
        assert_eq!(s3.replicas, 1);
    }
}
