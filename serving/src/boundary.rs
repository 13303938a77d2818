//! The merge at the time boundary B: a 1-minute bucket that starts before B
//! is answered by the batch views, any other by the speed views. A roll-up
//! bucket (5m, 1h, 1d) folds its minutes from whichever layer owns each, and
//! says `mixed` when it spans B.

use std::collections::BTreeMap;

use lambda_events::BucketViews;
use lambda_speed::window::Window;
use serde::Serialize;

use crate::query::Range;

/// Which layer answered a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Entirely before B.
    Batch,
    /// Entirely at or after B.
    Speed,
    /// Spans B (roll-ups only).
    Mixed,
}

/// Where the bucket `[start, end)` passes from the batch views to the speed
/// windows: B clamped into it (without a committed batch run, `start`:
/// everything is the speed layer's).
pub fn split(start: i64, end: i64, boundary: Option<i64>) -> i64 {
    boundary.unwrap_or(i64::MIN).clamp(start, end)
}

/// Folds the views of every bucket of `range`, each minute from its layer.
pub fn merge<A: Default>(
    range: &Range,
    boundary: Option<i64>,
    batch: &BTreeMap<i64, BucketViews>,
    speed: &BTreeMap<i64, Window>,
    mut fold: impl FnMut(&mut A, &BucketViews),
) -> Vec<(i64, Layer, A)> {
    let width = range.step.millis();
    range
        .bucket_starts()
        .map(|start| {
            let end = start + width;
            let split = split(start, end, boundary);
            let mut acc = A::default();
            for (_, views) in batch.range(start..split) {
                fold(&mut acc, views);
            }
            for (_, window) in speed.range(split..end) {
                fold(&mut acc, &window.views);
            }
            let layer = if split == end {
                Layer::Batch
            } else if split == start {
                Layer::Speed
            } else {
                Layer::Mixed
            };
            (start, layer, acc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_events::Step;
    use lambda_events::bucket::MINUTE_MS;
    use lambda_events::kpi::FunnelCounts;

    fn views(clicks: u64) -> BucketViews {
        let mut v = BucketViews::default();
        v.funnel.insert(
            String::new(),
            FunnelCounts {
                clicks,
                ..Default::default()
            },
        );
        v
    }

    #[test]
    fn minutes_before_b_come_from_batch_the_rest_from_speed() {
        let m = MINUTE_MS;
        let batch: BTreeMap<i64, BucketViews> = (0..10).map(|i| (i * m, views(100))).collect();
        let speed: BTreeMap<i64, Window> = (0..10)
            .map(|i| {
                (
                    i * m,
                    Window {
                        views: views(1),
                        ..Window::default()
                    },
                )
            })
            .collect();
        let sum = |acc: &mut u64, v: &BucketViews| *acc += v.funnel[""].clicks;
        let minute = Range {
            from: 0,
            to: 10 * m,
            step: Step::Minute,
        };
        let got = merge(&minute, Some(3 * m), &batch, &speed, sum);
        assert_eq!(got[2], (2 * m, Layer::Batch, 100));
        assert_eq!(got[3], (3 * m, Layer::Speed, 1));
        let five = Range {
            from: 0,
            to: 10 * m,
            step: Step::FiveMinutes,
        };
        let got = merge(&five, Some(3 * m), &batch, &speed, sum);
        assert_eq!(got, vec![(0, Layer::Mixed, 302), (5 * m, Layer::Speed, 5)]);
        let got = merge(&five, None, &batch, &speed, sum);
        assert_eq!(got, vec![(0, Layer::Speed, 5), (5 * m, Layer::Speed, 5)]);
    }
}
