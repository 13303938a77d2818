-- Funnel view: per 1-minute bucket and campaign, the counters of lambda_events::kpi::FunnelCounts
-- and the distinct users (lambda_events::sketch::Hll).
-- Input: `events`, the deduplicated funnel-events of one hour of the master dataset, with ts_ms.
-- Written for both batch engines: see batch-layer/src/dialect.rs for the placeholders.
SELECT
    CAST(ts_ms - ts_ms % 60000 AS BIGINT)                                                 AS bucket_start,
    coalesce(campaign_id, '')                                                            AS campaign_id,
    CAST(count(*) FILTER (WHERE event_type = 'impression') AS BIGINT)                    AS impressions,
    CAST(count(*) FILTER (WHERE event_type = 'click') AS BIGINT)                         AS clicks,
    CAST(count(*) FILTER (WHERE event_type = 'add_to_cart') AS BIGINT)                   AS add_to_carts,
    CAST(count(*) FILTER (WHERE event_type = 'purchase') AS BIGINT)                      AS purchases,
    -- Saturating at i64::MAX, as the speed layer's sum does (a sum of bounded amounts never gets
    -- there); summed as DECIMAL(38,0), which neither engine overflows on the way.
    CAST(least(coalesce(sum(CAST(amount_cents AS DECIMAL(38,0))) FILTER (WHERE event_type = 'purchase'), 0),
               9223372036854775807) AS BIGINT)                                          AS revenue_cents,
    CAST(count(*) FILTER (WHERE event_type = 'signup_start') AS BIGINT)                  AS signup_starts,
    CAST(count(*) FILTER (WHERE event_type = 'signup_complete') AS BIGINT)               AS signup_completes,
    -- Folded into a HyperLogLog (users_hll) by the batch layer before the file is written.
    {{set_agg(user_id)}}                                                                 AS users
FROM events
WHERE event_type IN ('impression', 'click', 'add_to_cart', 'purchase', 'signup_start', 'signup_complete')
GROUP BY 1, 2
ORDER BY 1, 2
