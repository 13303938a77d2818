//! The speed layer's views for readers in other processes.
//!
//! `lambda speed` answers `GET /internal/v1/speed?epoch=E&since=S` with a
//! [`Snapshot`]: the windows that changed after seq `S` (all of them when `E`
//! is not its current epoch), the start of every window it still holds (so a
//! reader drops evicted ones), and the small rest of its state in full.
//! A reader keeps one [`Mirror`] per speed instance and polls it; [`combine`]
//! folds the mirrors of several instances — each owning some partitions of one
//! consumer group — into one state that serving merges with the batch views.

use std::collections::{BTreeMap, BTreeSet};

use lambda_events::{BucketViews, Topic};
use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, RuleName};
use crate::checkpoint::ViewsWire;
use crate::window::{PartitionClock, SpeedCounters, SpeedState, Window};

/// What one poll returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The state's epoch; windows are relative to it.
    pub epoch: u64,
    /// The state's seq: ask for changes after it next time.
    pub seq: u64,
    /// Whether `windows` holds every window (the reader starts over) or only changed ones.
    pub full: bool,
    /// Changed windows: `(start, views)`.
    pub windows: Vec<(i64, ViewsWire)>,
    /// Starts of all windows held.
    pub starts: Vec<i64>,
    /// Greatest event time seen.
    pub max_event_ts: Option<i64>,
    /// Allowed lateness in ms.
    pub allowed_lateness_ms: i64,
    /// `(topic, partition, next offset)` consumed.
    pub offsets: Vec<(String, u32, u64)>,
    /// `(topic, window start, late events)`.
    pub late_ledger: Vec<(Topic, i64, u64)>,
    /// `(counted, duplicates, late, invalid)`.
    pub counters: (u64, u64, u64, u64),
    /// Wall time of the last checkpoint (ms).
    pub last_checkpoint_ms: Option<i64>,
    /// The batch boundary B this instance knows.
    pub batch_boundary: Option<i64>,
    /// The instance's watermark.
    pub watermark: Option<i64>,
    /// `(topic, partition, max event time, idle)` per partition.
    pub clocks: Vec<(String, u32, i64, bool)>,
    /// Alert transitions after the asked alert seq, oldest first.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The alerts active now, `(rule, key, raised at)`, when the reader
    /// cannot follow them from the transitions: its epoch is not this
    /// state's, or the transitions right after its seq are no longer kept
    /// (a state keeps its newest
    /// [`RECENT_ALERTS`](crate::alerts::RECENT_ALERTS)). `None`: the
    /// transitions tell it all (see [`AlertEngine::news`](crate::alerts::AlertEngine::news)).
    #[serde(default)]
    pub active_alerts: Option<Vec<(RuleName, String, i64)>>,
}

pub use crate::alerts::AlertNews;

/// The snapshot a reader holding `(epoch, since)` needs, with the alert
/// transitions after `alerts_since` (all that are kept, when the reader's
/// epoch is not this state's: a restored state renumbers nothing, but a fresh
/// one starts its alert seq again).
pub fn snapshot(state: &SpeedState, epoch: u64, since: u64, alerts_since: u64) -> Snapshot {
    let alerts_since = if epoch == state.epoch {
        alerts_since
    } else {
        0
    };
    let full = epoch != state.epoch || since == 0 || since > state.seq;
    let AlertNews {
        transitions: alerts,
        active: active_alerts,
    } = state.alerts.news(alerts_since, epoch != state.epoch);
    let windows = state
        .windows
        .iter()
        .filter(|(_, w)| full || w.version > since)
        .map(|(start, w)| (*start, ViewsWire::from_views(&w.views)))
        .collect();
    Snapshot {
        epoch: state.epoch,
        seq: state.seq,
        full,
        windows,
        starts: state.windows.keys().copied().collect(),
        max_event_ts: state.max_event_ts,
        allowed_lateness_ms: state.allowed_lateness_ms,
        offsets: state.offsets_list(),
        late_ledger: state.ledger_list(),
        counters: state.counters.as_tuple(),
        last_checkpoint_ms: state.last_checkpoint_ms,
        batch_boundary: state.batch_boundary,
        watermark: state.watermark(),
        clocks: state
            .clocks
            .iter()
            .map(|c| (c.topic.clone(), c.partition, c.max_ts, c.idle))
            .collect(),
        alerts,
        active_alerts,
    }
}

/// The longest duration a setting takes, in ms.
fn max_duration_ms() -> i64 {
    i64::try_from(lambda_events::time::MAX_DURATION.as_millis()).unwrap_or(i64::MAX)
}

/// [`plausible_time`]'s bound, either way (ms).
pub fn plausible_time_bound() -> i64 {
    lambda_events::limits::MAX_TS_MS.saturating_add(max_duration_ms())
}

/// A time a speed state can hold, named in the error if not: an event's
/// time is at most `MAX_TS_MS`; a watermark is behind it, an alert's time
/// (offline after …) ahead of it, by at most a duration. What comes from
/// outside (a snapshot, a checkpoint) is checked with it before anything
/// computes with it.
pub fn plausible_time(name: &str, t: i64) -> Result<(), String> {
    let bound = plausible_time_bound();
    if (-bound..=bound).contains(&t) {
        Ok(())
    } else {
        Err(format!("{name} {t} is past {bound} ms either way"))
    }
}

impl Snapshot {
    /// Refuses a snapshot a speed instance cannot have sent: times past
    /// [`MAX_TS_MS`](lambda_events::limits::MAX_TS_MS) and a duration either
    /// way (a partition's clock may also be `i64::MIN`: none yet), a lateness past
    /// [`MAX_DURATION`](lambda_events::time::MAX_DURATION), more alert
    /// transitions than a state keeps, or an alert's key or message past
    /// [`MAX_ALERT_TEXT_BYTES`](lambda_events::limits::MAX_ALERT_TEXT_BYTES).
    /// A reader in another process takes it from the network: outside
    /// input (a hostile instance's `max_event_ts` of `i64::MIN` broke every
    /// query, its 20 MB alert keys filled serving's memory).
    pub fn check(&self) -> Result<(), String> {
        use lambda_events::limits::ALERT_TRANSITIONS_KEPT;
        let most = max_duration_ms();
        let time = plausible_time;
        let text = crate::alerts::check_text;
        for (name, t) in [
            ("max_event_ts", self.max_event_ts),
            ("last_checkpoint_ms", self.last_checkpoint_ms),
            ("batch_boundary", self.batch_boundary),
            ("watermark", self.watermark),
        ] {
            t.map_or(Ok(()), |t| time(name, t))?;
        }
        if !(0..=most).contains(&self.allowed_lateness_ms) {
            return Err(format!(
                "allowed_lateness_ms {} is not within 0..={most}",
                self.allowed_lateness_ms
            ));
        }
        for start in self
            .starts
            .iter()
            .chain(self.windows.iter().map(|(s, _)| s))
        {
            time("a window start", *start)?;
        }
        for (_, start, _) in &self.late_ledger {
            time("a late ledger minute", *start)?;
        }
        for (_, _, max_ts, _) in &self.clocks {
            if *max_ts != i64::MIN {
                time("a partition's max event time", *max_ts)?;
            }
        }
        if self.alerts.len() > ALERT_TRANSITIONS_KEPT {
            return Err(format!(
                "{} alert transitions; a state keeps at most {ALERT_TRANSITIONS_KEPT}",
                self.alerts.len()
            ));
        }
        for alert in &self.alerts {
            time("an alert's time", alert.ts)?;
            text("key", &alert.key)?;
            text("message", &alert.message)?;
        }
        for (_, key, raised) in self.active_alerts.iter().flatten() {
            time("an active alert's time", *raised)?;
            text("key", key)?;
        }
        Ok(())
    }
}

/// A reader's copy of one speed instance.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// The last snapshot applied, without its windows.
    pub meta: Snapshot,
    /// The instance's windows.
    pub windows: BTreeMap<i64, BucketViews>,
    /// The last alert seq received.
    pub alerts_seen: u64,
}

impl Mirror {
    /// `(epoch, since)` to ask for next.
    pub fn cursor(&self) -> (u64, u64) {
        (self.meta.epoch, self.meta.seq)
    }

    /// Applies a snapshot: replaces changed windows, drops evicted ones.
    /// Returns what it carried about alerts: the new transitions, and the
    /// active alerts if it sent them.
    pub fn apply(&mut self, mut snapshot: Snapshot) -> AlertNews {
        let alerts = AlertNews {
            transitions: std::mem::take(&mut snapshot.alerts),
            active: snapshot.active_alerts.take(),
        };
        if let Some(last) = alerts.transitions.last() {
            self.alerts_seen = self.alerts_seen.max(last.seq);
        }
        if snapshot.full {
            self.windows.clear();
        }
        for (start, views) in std::mem::take(&mut snapshot.windows) {
            self.windows.insert(start, views.into_views());
        }
        let held: BTreeSet<i64> = snapshot.starts.iter().copied().collect();
        self.windows.retain(|start, _| held.contains(start));
        self.meta = snapshot;
        alerts
    }
}

/// One state from the mirrors of several instances of one consumer group.
///
/// Each instance owns different partitions, and a key always goes to the same
/// partition, so the instances' windows hold disjoint events: the combined
/// window is the merge of theirs. The combined watermark is the lowest of the
/// instances' (a bucket is final only when every instance has closed it),
/// leaving out instances whose every partition is idle unless all are.
pub fn combine(mirrors: &[Mirror], horizon_ms: i64) -> SpeedState {
    let lateness = mirrors
        .iter()
        .map(|m| m.meta.allowed_lateness_ms)
        .max()
        .unwrap_or(0);
    let mut state = SpeedState::new(lateness, horizon_ms);
    state.max_event_ts = mirrors.iter().filter_map(|m| m.meta.max_event_ts).max();
    // An instance (or partition) whose every clock is idle does not hold
    // the others back, as an idle partition does not inside one state.
    let idle = |m: &Mirror| !m.meta.clocks.is_empty() && m.meta.clocks.iter().all(|c| c.3);
    let active = mirrors
        .iter()
        .filter(|m| !idle(m))
        .filter_map(|m| m.meta.watermark)
        .min();
    let any = || mirrors.iter().filter_map(|m| m.meta.watermark).min();
    // One with records to deliver and no watermark yet (a partition being
    // read from its start) holds it back altogether, as an expected
    // partition does inside one state: none of its buckets is closed.
    let waiting = mirrors.iter().any(|m| {
        m.meta.watermark.is_none()
            && m.meta
                .clocks
                .iter()
                .any(|(_, _, max_ts, idle)| !idle && *max_ts == i64::MIN)
    });
    state.watermark =
        crate::window::Watermark::restored(if waiting { None } else { active.or_else(any) });
    state.clocks = mirrors
        .iter()
        .flat_map(|m| m.meta.clocks.iter())
        .map(|(topic, partition, max_ts, idle)| PartitionClock {
            topic: topic.clone(),
            partition: *partition,
            max_ts: *max_ts,
            idle: *idle,
            appended: i64::MIN,
        })
        .collect();
    state.batch_boundary = mirrors.iter().filter_map(|m| m.meta.batch_boundary).max();
    state.last_checkpoint_ms = mirrors
        .iter()
        .filter_map(|m| m.meta.last_checkpoint_ms)
        .min();
    let mut counters = SpeedCounters::default();
    for mirror in mirrors {
        for (start, views) in &mirror.windows {
            match state.windows.get_mut(start) {
                Some(window) => window.views.merge(views),
                None => {
                    let window = Window {
                        views: views.clone(),
                        ..Window::default()
                    };
                    state.windows.insert(*start, window);
                }
            }
        }
        for (topic, partition, offset) in &mirror.meta.offsets {
            state.offsets.insert((topic.clone(), *partition), *offset);
        }
        for (topic, start, n) in &mirror.meta.late_ledger {
            crate::window::ledger_late(&mut state.late_ledger, (*topic, *start), *n);
        }
        let (counted, duplicates, late, invalid) = mirror.meta.counters;
        // Counts of remote instances (outside input): summed saturating.
        counters.counted = counters.counted.saturating_add(counted);
        counters.duplicates = counters.duplicates.saturating_add(duplicates);
        counters.late = counters.late.saturating_add(late);
        counters.invalid = counters.invalid.saturating_add(invalid);
    }
    state.counters = counters;
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_events::{Event, EventType};

    fn click(id: &str, user: &str, ts: i64) -> Event {
        let mut e = Event::bare(id, EventType::Click, ts);
        e.user_id = Some(user.into());
        e
    }

    const T0: i64 = 1_699_999_980_000; // on a minute boundary

    #[test]
    fn a_mirror_follows_changes_and_evictions() {
        let mut state = SpeedState::new(0, 3 * 60_000);
        let mut mirror = Mirror::default();
        state.apply(&click("a", "u", T0));
        state.apply(&click("b", "u", T0 + 60_000));
        let (epoch, since) = mirror.cursor();
        let first = snapshot(&state, epoch, since, 0);
        assert!(first.full);
        assert_eq!(first.windows.len(), 2);
        mirror.apply(first);

        // One more event: only its window travels.
        state.apply(&click("c", "u", T0 + 60_000));
        let (epoch, since) = mirror.cursor();
        let delta = snapshot(&state, epoch, since, 0);
        assert!(!delta.full);
        assert_eq!(delta.windows.len(), 1);
        mirror.apply(delta);
        assert_eq!(mirror.windows[&(T0 + 60_000)].funnel[""].clicks, 2);

        // Nothing new: nothing travels.
        let (epoch, since) = mirror.cursor();
        assert!(snapshot(&state, epoch, since, 0).windows.is_empty());

        // Eviction: the mirror drops the window too.
        state.apply(&click("d", "u", T0 + 10 * 60_000));
        state.evict();
        let (epoch, since) = mirror.cursor();
        mirror.apply(snapshot(&state, epoch, since, 0));
        let mine: Vec<i64> = mirror.windows.keys().copied().collect();
        let theirs: Vec<i64> = state.windows.keys().copied().collect();
        assert_eq!(mine, theirs);

        // A replaced state (a restart) has a new epoch: the reader starts over.
        let mut restarted = SpeedState::new(0, 3 * 60_000);
        restarted.apply(&click("e", "u", T0 + 11 * 60_000));
        let (epoch, since) = mirror.cursor();
        let again = snapshot(&restarted, epoch, since, 0);
        assert!(again.full);
        mirror.apply(again);
        assert_eq!(mirror.windows.len(), 1);
    }

    #[test]
    fn instances_combine_into_one_state() {
        let mut one = SpeedState::new(60_000, 3_600_000);
        let mut two = SpeedState::new(60_000, 3_600_000);
        one.apply(&click("a", "u1", T0));
        one.apply(&click("b", "u1", T0 + 5 * 60_000));
        two.apply(&click("c", "u2", T0 + 10));
        two.apply(&click("d", "u2", T0 + 2 * 60_000));
        one.offsets.insert(("funnel-events".into(), 0), 2);
        two.offsets.insert(("funnel-events".into(), 1), 2);
        let mirrors: Vec<Mirror> = [&one, &two]
            .iter()
            .map(|s| {
                let mut m = Mirror::default();
                m.apply(snapshot(s, 0, 0, 0));
                m
            })
            .collect();
        let combined = combine(&mirrors, 3_600_000);
        assert_eq!(combined.windows[&T0].views.funnel[""].clicks, 2);
        assert_eq!(combined.windows.len(), 3);
        assert_eq!(combined.counters.counted, 4);
        assert_eq!(combined.offsets.len(), 2);
        // The lower watermark: instance two has seen less event time.
        assert_eq!(combined.watermark(), two.watermark());
    }

    /// Partition states combined (a speed group): an idle partition does
    /// not hold the watermark back unless every one is idle; a partition
    /// with records to read and none read yet holds it back altogether.
    #[test]
    fn idle_partitions_do_not_hold_the_combined_watermark_and_waiting_ones_do() {
        let partition = |p: u32, ts: i64| {
            let mut state = SpeedState::new(60_000, 3_600_000);
            state.apply_from("funnel-events", p, &click(&format!("e{p}"), "u", ts));
            state
        };
        let mirror = |state: &SpeedState| {
            let mut m = Mirror::default();
            m.apply(snapshot(state, 0, 0, 0));
            m
        };
        let ahead = partition(0, T0 + 10 * 60_000);
        let mut behind = partition(1, T0);
        let both = combine(&[mirror(&ahead), mirror(&behind)], 3_600_000);
        assert_eq!(both.watermark(), behind.watermark());
        behind.set_idle("funnel-events", 1, true);
        let idle = combine(&[mirror(&ahead), mirror(&behind)], 3_600_000);
        assert_eq!(idle.watermark(), ahead.watermark());
        let mut quiet = ahead.clone();
        quiet.set_idle("funnel-events", 0, true);
        let all_idle = combine(&[mirror(&quiet), mirror(&behind)], 3_600_000);
        assert_eq!(all_idle.watermark(), behind.watermark());
        let mut waiting = SpeedState::new(60_000, 3_600_000);
        waiting.expect_partition("funnel-events", 2);
        let held = combine(&[mirror(&ahead), mirror(&waiting)], 3_600_000);
        assert_eq!(held.watermark(), None);
    }

    /// A snapshot from another process is checked: a real one passes; each
    /// bound holds at its edge and refuses one past it (a hostile
    /// instance's `max_event_ts` of i64::MIN broke every query; its 20 MB
    /// alert keys filled serving's memory).
    #[test]
    fn snapshots_past_their_bounds_are_refused() {
        use crate::alerts::AlertState;
        use lambda_events::limits::{ALERT_TRANSITIONS_KEPT, MAX_ALERT_TEXT_BYTES, MAX_TS_MS};
        let mut state = SpeedState::new(60_000, 3_600_000);
        state.apply(&click("a", "u", T0));
        let real = snapshot(&state, 0, 0, 0);
        assert_eq!(real.check(), Ok(()));
        let most = lambda_events::time::MAX_DURATION.as_millis() as i64;
        let bound = MAX_TS_MS + most;
        let alert = |key: String| Alert {
            seq: 1,
            rule: RuleName::Alarm,
            key,
            state: AlertState::Raised,
            ts: T0,
            message: "m".into(),
            value: None,
        };
        let text = |n: usize| "k".repeat(n);
        type Change = Box<dyn Fn(&mut Snapshot)>;
        let cases: Vec<(&str, Change, Change)> = vec![
            (
                "max_event_ts",
                Box::new(move |s| s.max_event_ts = Some(-bound)),
                Box::new(move |s| s.max_event_ts = Some(-bound - 1)),
            ),
            (
                "watermark",
                Box::new(move |s| s.watermark = Some(bound)),
                Box::new(move |s| s.watermark = Some(bound + 1)),
            ),
            (
                "allowed_lateness_ms",
                Box::new(move |s| s.allowed_lateness_ms = most),
                Box::new(move |s| s.allowed_lateness_ms = most + 1),
            ),
            (
                "a window start",
                Box::new(move |s| s.starts.push(bound)),
                Box::new(move |s| s.starts.push(i64::MIN)),
            ),
            (
                "a partition's max event time",
                Box::new(move |s| s.clocks.push(("t".into(), 0, i64::MIN, false))),
                Box::new(move |s| s.clocks.push(("t".into(), 0, i64::MAX, false))),
            ),
            (
                "key",
                Box::new(move |s| s.alerts.push(alert(text(MAX_ALERT_TEXT_BYTES)))),
                Box::new(move |s| s.alerts.push(alert(text(MAX_ALERT_TEXT_BYTES + 1)))),
            ),
            (
                "key",
                Box::new(move |s| {
                    s.active_alerts = Some(vec![(RuleName::Alarm, text(MAX_ALERT_TEXT_BYTES), T0)])
                }),
                Box::new(move |s| {
                    s.active_alerts =
                        Some(vec![(RuleName::Alarm, text(MAX_ALERT_TEXT_BYTES + 1), T0)])
                }),
            ),
            (
                "alert transitions",
                Box::new(move |s| s.alerts = vec![alert("k".into()); ALERT_TRANSITIONS_KEPT]),
                Box::new(move |s| s.alerts = vec![alert("k".into()); ALERT_TRANSITIONS_KEPT + 1]),
            ),
        ];
        for (name, at, past) in cases {
            let mut fine = real.clone();
            at(&mut fine);
            assert_eq!(fine.check(), Ok(()), "{name} at its bound");
            let mut bad = real.clone();
            past(&mut bad);
            let error = bad.check().expect_err(name);
            assert!(error.contains(name), "{name}: {error}");
        }
    }

    /// Remote instances' counts are outside input: combined, they add up
    /// saturating (two at u64::MAX panicked a debug build: a review).
    #[test]
    fn remote_counts_combine_without_overflow() {
        let huge = |minute: i64| {
            let mut m = Mirror::default();
            m.meta.counters = (u64::MAX, u64::MAX, u64::MAX, u64::MAX);
            m.meta.late_ledger = vec![(Topic::Funnel, T0 + minute * 60_000, u64::MAX)];
            m
        };
        let combined = combine(&[huge(0), huge(1)], 3_600_000);
        assert_eq!(
            combined.counters.as_tuple(),
            (u64::MAX, u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!(combined.late_by_topic()[&Topic::Funnel], u64::MAX);
        let one = combine(&[huge(0)], 3_600_000);
        assert_eq!(one.late_by_topic()[&Topic::Funnel], u64::MAX);
    }
}
