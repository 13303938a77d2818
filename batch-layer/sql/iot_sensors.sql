-- Sensor view: per 1-minute bucket, device and sensor, lambda_events::kpi::SensorStats.
-- `last` is the value of the reading with the greatest (ts, event_id), as in the speed layer.
-- `sum` adds in (ts, event_id) order: floating-point addition depends on order, and a re-run
-- must give the same bytes whatever order DuckDB's threads scan the rows in.
-- Input: `events`, the deduplicated iot-events of one hour of the master dataset.
SELECT
    CAST((epoch_ms(ts) // 60000) * 60000 AS BIGINT)          AS bucket_start,
    device_id,
    sensor,
    CAST(count(*) AS BIGINT)                                 AS count,
    min(value)                                               AS min,
    max(value)                                               AS max,
    sum(value ORDER BY epoch_ms(ts), event_id)               AS sum,
    CAST(max(epoch_ms(ts)) AS BIGINT)                        AS last_ts,
    arg_max(event_id, (epoch_ms(ts), event_id))              AS last_event_id,
    arg_max(value, (epoch_ms(ts), event_id))                 AS last
FROM events
WHERE event_type = 'sensor_reading'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
