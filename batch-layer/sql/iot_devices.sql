-- Device view: per 1-minute bucket and device, lambda_events::kpi::DeviceCounts.
-- Input: `events`, the deduplicated iot-events of one hour of the master dataset, with ts_ms.
-- Written for both batch engines: see batch-layer/src/dialect.rs.
SELECT
    CAST(ts_ms - ts_ms % 60000 AS BIGINT)                                                     AS bucket_start,
    device_id,
    CAST(count(*) FILTER (WHERE event_type = 'device_status' AND status = 'online') AS BIGINT)  AS online,
    CAST(count(*) FILTER (WHERE event_type = 'device_status' AND status = 'offline') AS BIGINT) AS offline,
    CAST(count(*) FILTER (WHERE event_type = 'alarm' AND severity = 'low') AS BIGINT)           AS alarms_low,
    CAST(count(*) FILTER (WHERE event_type = 'alarm' AND severity = 'medium') AS BIGINT)        AS alarms_medium,
    CAST(count(*) FILTER (WHERE event_type = 'alarm' AND severity = 'high') AS BIGINT)          AS alarms_high,
    CAST(count(*) FILTER (WHERE event_type = 'alarm' AND severity = 'critical') AS BIGINT)      AS alarms_critical
FROM events
WHERE event_type IN ('device_status', 'alarm')
GROUP BY 1, 2
ORDER BY 1, 2
