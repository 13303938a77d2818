//! The speed layer's main loop: restore the checkpoint, fetch from the log at
//! the checkpointed offsets, fold, evict, and checkpoint on an interval and
//! at shutdown; offsets are committed to the log only after the checkpoint
//! holding them is durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::{Event, Topic};
use lambda_log::{EventLog, FetchPosition, LogError, Record};
use tokio_util::sync::CancellationToken;

use crate::{SpeedConfig, SpeedViews, checkpoint};

/// Records asked for per fetch.
const FETCH_MAX_RECORDS: usize = 4096;
/// How long a fetch waits for new records before the loop looks around again.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);

/// Loads the checkpoint, if there is one, into `views`. Call it before
/// [`run`] and before serving reads `views`, so no answer is given from an
/// empty state that is about to be replaced.
pub async fn restore(config: &SpeedConfig, views: &SpeedViews) -> anyhow::Result<()> {
    let path = config.checkpoint_path.clone();
    let (lateness, horizon) = (config.allowed_lateness_ms, config.horizon_ms);
    let restored = tokio::task::spawn_blocking(move || checkpoint::load(&path, lateness, horizon))
        .await
        .context("checkpoint load task")??;
    if let Some(state) = restored {
        tracing::info!(
            windows = state.windows.len(),
            watermark = state.watermark(),
            "restored speed layer checkpoint"
        );
        let mut current = views.write();
        // Serving may already have told us B.
        let batch_boundary = current.batch_boundary;
        let rules = current.alerts.rules.clone();
        *current = state;
        current.batch_boundary = batch_boundary;
        current.alerts.rules = rules;
    }
    Ok(())
}

/// Runs the speed layer until `shutdown` fires, from the state in `views`
/// (see [`restore`]) and the offsets it holds.
#[tracing::instrument(name = "speed", skip_all)]
pub async fn run(
    config: SpeedConfig,
    log: Arc<dyn EventLog>,
    views: SpeedViews,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut positions = initial_positions(&config, log.as_ref(), &views).await?;
    tracing::info!(
        partitions = positions.len(),
        instance = config.instance.0,
        instances = config.instance.1,
        "speed layer consuming"
    );
    // When each partition last delivered a record (for idleness).
    let mut last_record: Vec<((String, u32), Instant)> = positions
        .iter()
        .map(|p| ((p.topic.clone(), p.partition), Instant::now()))
        .collect();
    let mut checkpoint_timer = tokio::time::interval(config.checkpoint_interval);
    checkpoint_timer.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = checkpoint_timer.tick() => {
                write_checkpoint(&config, log.as_ref(), &views).await?;
            }
            fetched = log.fetch(&positions, FETCH_MAX_RECORDS, FETCH_MAX_WAIT) => {
                match fetched {
                    Ok(records) => {
                        mark_idleness(&views, &mut last_record, &records, config.idle_timeout);
                        let invalid = apply(&views, &mut positions, records);
                        if config.dead_letter_invalid && !invalid.is_empty() {
                            dead_letter(log.as_ref(), invalid, &shutdown).await?;
                        }
                    }
                    Err(LogError::OffsetOutOfRange { topic, partition, start, offset, .. }) => {
                        tracing::warn!(%topic, partition, offset, start, "offset fell out of retention; skipping ahead");
                        for position in positions.iter_mut().filter(|p| p.topic == topic && p.partition == partition) {
                            position.offset = start;
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(error).context("speed layer fetch"),
                }
            }
        }
    }
    write_checkpoint(&config, log.as_ref(), &views).await?;
    tracing::info!("speed layer stopped");
    Ok(())
}

/// Notes which partitions delivered, and marks idle those that have not for `timeout`.
fn mark_idleness(
    views: &SpeedViews,
    last_record: &mut [((String, u32), Instant)],
    records: &[lambda_log::StoredRecord],
    timeout: Duration,
) {
    let now = Instant::now();
    for ((topic, partition), at) in last_record.iter_mut() {
        if records
            .iter()
            .any(|r| r.partition == *partition && r.topic == *topic)
        {
            *at = now;
        } else if now.duration_since(*at) >= timeout {
            views.write().set_idle(topic, *partition, true);
        }
    }
}

/// Writes invalid records to `dead-letter`, retrying while the log is
/// unavailable: the consumed offsets (checkpointed later by this same loop)
/// move past them only once they are there. A crash in between writes them
/// again after the restart (at least once).
async fn dead_letter(
    log: &dyn EventLog,
    records: Vec<Record>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let n = records.len();
    loop {
        match log.append(Topic::DEAD_LETTER, records.clone()).await {
            Ok(_) => {
                tracing::debug!(records = n, "dead-lettered invalid records");
                return Ok(());
            }
            Err(error) if error.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(%error, "dead-lettering failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("writing to dead-letter"),
        }
    }
}

async fn initial_positions(
    config: &SpeedConfig,
    log: &dyn EventLog,
    views: &SpeedViews,
) -> anyhow::Result<Vec<FetchPosition>> {
    let mut positions = Vec::new();
    let mut pending = Vec::new();
    for topic in Topic::ALL {
        let ranges = log
            .ranges(topic.name())
            .await
            .with_context(|| format!("ranges of {topic}"))?;
        let state = views.read();
        for (partition, range) in ranges.iter().enumerate() {
            let partition = partition as u32;
            if !config.owns(partition) {
                continue;
            }
            let checkpointed = state
                .offsets
                .get(&(topic.name().to_string(), partition))
                .copied();
            let offset = checkpointed
                .unwrap_or(range.start)
                .clamp(range.start, range.end);
            if offset < range.end {
                pending.push((topic.name(), partition));
            }
            positions.push(FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset,
            });
        }
    }
    // Partitions with records waiting hold the watermark back until they deliver.
    let mut state = views.write();
    for (topic, partition) in pending {
        state.expect_partition(topic, partition);
    }
    Ok(positions)
}

/// Folds records in, advances `positions` past them, and returns
/// dead-letter records for the invalid ones. (Public for `lambda bench speed`.)
pub fn apply(
    views: &SpeedViews,
    positions: &mut [FetchPosition],
    records: Vec<lambda_log::StoredRecord>,
) -> Vec<Record> {
    let mut invalid = Vec::new();
    if records.is_empty() {
        return invalid;
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut state = views.write();
    for stored in records {
        match Event::from_record(&stored.record.value, &stored.topic) {
            Ok(event) => {
                state.apply_from(&stored.topic, stored.partition, &event);
            }
            Err(error) => {
                state.counters.invalid += 1;
                tracing::debug!(topic = %stored.topic, partition = stored.partition, offset = stored.offset, %error, "invalid record");
                let source = format!("{}/{}/{}", stored.topic, stored.partition, stored.offset);
                invalid.push(Record::dead_letter(
                    stored.record.value.clone(),
                    &error.to_string(),
                    &source,
                    now_ms,
                ));
            }
        }
        if let Some(position) = positions
            .iter_mut()
            .find(|p| p.partition == stored.partition && p.topic == stored.topic)
        {
            position.offset = stored.offset + 1;
        }
    }
    for position in positions.iter() {
        let key = (position.topic.clone(), position.partition);
        if state.offsets.get(&key) != Some(&position.offset) {
            state.offsets.insert(key, position.offset);
        }
    }
    state.evict();
    invalid
}

async fn write_checkpoint(
    config: &SpeedConfig,
    log: &dyn EventLog,
    views: &SpeedViews,
) -> anyhow::Result<()> {
    let (bytes, offsets) = {
        let state = views.read();
        (checkpoint::encode(&state), state.offsets.clone())
    };
    let path = config.checkpoint_path.clone();
    tokio::task::spawn_blocking(move || checkpoint::write(&path, &bytes))
        .await
        .context("checkpoint task")??;
    views.write().last_checkpoint_ms = Some(chrono::Utc::now().timestamp_millis());
    for topic in Topic::ALL {
        let topic_offsets: Vec<(u32, u64)> = offsets
            .iter()
            .filter(|((t, _), _)| t == topic.name())
            .map(|((_, p), o)| (*p, *o))
            .collect();
        if !topic_offsets.is_empty()
            && let Err(error) = log
                .commit(&config.group, topic.name(), &topic_offsets)
                .await
        {
            // The checkpoint is the source of truth; the group offsets are for lag reporting.
            tracing::warn!(%error, %topic, "committing speed layer offsets failed");
        }
    }
    Ok(())
}
