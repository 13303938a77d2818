-- Sensor view: per 1-minute bucket, device and sensor, lambda_events::kpi::SensorStats.
-- `last` is the value of the reading with the greatest (ts, event_id), as in the speed layer.
-- `sum` adds in (ts, event_id) order: floating-point addition depends on order, and a re-run
-- must give the same bytes whatever order an engine's threads scan the rows in.
-- Input: `events`, the deduplicated iot-events of one hour of the master dataset, with ts_ms.
-- Written for both batch engines: see batch-layer/src/dialect.rs for the placeholders.
SELECT
    CAST(ts_ms - ts_ms % 60000 AS BIGINT)                     AS bucket_start,
    device_id,
    sensor,
    CAST(count(*) AS BIGINT)                                 AS count,
    min(value)                                               AS min,
    max(value)                                               AS max,
    {{ordered_sum(value; ts_ms, event_id)}}                  AS sum,
    CAST(max(ts_ms) AS BIGINT)                               AS last_ts,
    max_by(event_id, {{tuple(ts_ms, event_id)}})             AS last_event_id,
    max_by(value, {{tuple(ts_ms, event_id)}})                AS last
FROM events
WHERE event_type = 'sensor_reading'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
