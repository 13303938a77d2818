-- Pages view: per 1-minute bucket, page and device, the counters of lambda_events::kpi::PageCounts
-- and the render times (lambda_events::sketch::DdSketch).
-- Input: `events`, the deduplicated funnel-events of one hour of the master dataset, with ts_ms.
-- Written for both batch engines: see batch-layer/src/dialect.rs for the placeholders.
SELECT
    CAST(ts_ms - ts_ms % 60000 AS BIGINT)                                AS bucket_start,
    coalesce(page, '')                                                  AS page,
    coalesce(device, '')                                                AS device,
    CAST(count(*) FILTER (WHERE event_type = 'page_view') AS BIGINT)    AS page_views,
    CAST(count(*) FILTER (WHERE event_type = 'error') AS BIGINT)        AS errors,
    -- Folded into a DDSketch (render_sketch) by the batch layer before the file is written.
    {{list_agg(render_ms)}}
        FILTER (WHERE event_type = 'page_view' AND render_ms IS NOT NULL) AS render_values
FROM events
WHERE event_type IN ('page_view', 'error')
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
