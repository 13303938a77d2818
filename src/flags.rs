//! The flags every subcommand shares, and how they become [`Shared`]: the
//! one place where flags and `LAMBDA_*` variables are read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::TypedValueParser;
use lambda_events::Severity;
use lambda_events::time::parse_duration;
use lambda_kappa::Architecture;
use lambda_pipeline::demo::GeneratorSettings;
use lambda_pipeline::roles::Shared;
use lambda_speed::alerts::{AlertOverrides, AlertRules, SensorRange};

/// Settings every process shares.
#[derive(Debug, Args)]
pub(crate) struct SharedArgs {
    /// Directory for local state (checkpoints, caches; the embedded log and lake by default), e.g. ./data.
    #[arg(long, env = "LAMBDA_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The log, e.g. kafka://127.0.0.1:9092 or kafka://b1:9092?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512 (default: embedded://DATA_DIR/log).
    #[arg(long, env = "LAMBDA_LOG_URL")]
    log_url: Option<String>,
    /// Partitions per event topic when they are created, e.g. 4.
    #[arg(long, env = "LAMBDA_PARTITIONS", default_value_t = lambda_ingest::DEFAULT_PARTITIONS)]
    partitions: u32,
    /// How far the watermark trails the newest event, e.g. 60s.
    #[arg(long, env = "LAMBDA_ALLOWED_LATENESS", default_value = "60s", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// A partition that sends nothing for this long of the log's time (the append times of the records the other partitions send; in the group mode, of each member's own clock) stops holding the speed layer's watermark back, e.g. 30s.
    #[arg(long, env = "LAMBDA_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Alert rules as TOML (see infra/alerts.example.toml); without it, the built-in defaults.
    #[arg(long, env = "LAMBDA_ALERTS_FILE")]
    alerts_file: Option<PathBuf>,
    #[command(flatten)]
    alerts: AlertArgs,
    /// Bearer token that POST /api/v1/admin/batch/run requires; without it the admin endpoints are off.
    #[arg(long, env = "LAMBDA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    lake: LakeArgs,
    /// lambda: batch views before the boundary B, speed views after it; kappa: no batch layer, the speed layer's views kept whole and recomputed by `lambda kappa replay`.
    #[arg(long, env = "LAMBDA_ARCHITECTURE", default_value_t = Architecture::Lambda,
          value_parser = clap::builder::PossibleValuesParser::new(["lambda", "kappa"])
              .map(|s| s.parse::<Architecture>().expect("one of the possible values")))]
    architecture: Architecture,
    #[command(flatten)]
    batch_engine: BatchEngineArgs,
}

/// Which engine computes the batch views.
#[derive(Debug, Args)]
struct BatchEngineArgs {
    /// duckdb: in the batch process, one machine; spark: on a Spark cluster through Spark Connect (needs --spark-url); auto: Spark when --spark-url answers as a run starts, else DuckDB (both write the same views).
    #[arg(long = "batch-engine", env = "LAMBDA_BATCH_ENGINE", default_value = "duckdb",
          value_parser = lambda_batch::ENGINE_NAMES)]
    name: String,
    /// The Spark Connect server of --batch-engine spark, e.g. sc://spark-connect:15002.
    #[arg(long = "spark-url", env = "LAMBDA_SPARK_URL", hide_env_values = true)]
    spark_url: Option<String>,
    /// Longest a Spark call (connecting, one job over up to 168 hours of a view) may take, e.g. 10m.
    #[arg(long = "spark-timeout", env = "LAMBDA_SPARK_TIMEOUT", default_value = "10m", value_parser = parse_timeout)]
    spark_timeout: Duration,
}

/// Alert rules set by flags: each one given replaces that rule of the file
/// (or of the defaults).
#[derive(Debug, Args)]
struct AlertArgs {
    /// Sensor ranges, SENSOR:MIN:MAX[:N] (N readings in a row outside raise; default 3), repeatable or comma-separated, e.g. temperature:15:27:3.
    #[arg(
        long = "alert-sensor-range",
        env = "LAMBDA_ALERT_SENSOR_RANGE",
        value_delimiter = ','
    )]
    sensor_range: Vec<SensorRange>,
    /// A device offline (by its last status) for longer than this raises, e.g. 5m.
    #[arg(long = "alert-offline-after", env = "LAMBDA_ALERT_OFFLINE_AFTER", value_parser = parse_duration)]
    offline_after: Option<Duration>,
    /// Alarm severities that raise, e.g. high,critical.
    #[arg(long = "alert-severities", env = "LAMBDA_ALERT_SEVERITIES", value_delimiter = ',', value_parser = parse_severity)]
    severities: Vec<Severity>,
    /// A page's errors per page view in a closed minute above this raises, e.g. 0.1.
    #[arg(long = "alert-error-rate", env = "LAMBDA_ALERT_ERROR_RATE", value_parser = parse_rate)]
    error_rate: Option<f64>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if d.is_zero() {
            Err("a timeout of 0 would fail every call: give one above 0, e.g. 10m".to_string())
        } else {
            Ok(d)
        }
    })
}

/// `--session-timeout`: 1 s to 5 min (librdkafka's bounds with its
/// default poll interval).
pub(crate) fn parse_session_timeout(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) {
            Ok(d)
        } else {
            Err(format!(
                "{text:?} is outside 1s..=5m: a member not heard from for this long loses its partitions, e.g. 10s"
            ))
        }
    })
}

/// `--group`: a consumer group's name, 1 to 255 printable ASCII characters.
pub(crate) fn parse_group(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 255 && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?}: a group's name is 1 to 255 printable ASCII characters without spaces, e.g. speed-layer"
        ))
    }
}

/// `--member`: a name that is one path segment of the checkpoint store.
pub(crate) fn parse_member(text: &str) -> Result<String, String> {
    let plain = !text.is_empty()
        && text.len() <= 100
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plain {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?}: a member's name is 1 to 100 ASCII letters, digits, '-' and '.', not starting with '.', e.g. speed-1"
        ))
    }
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::parse(text.trim())
        .ok_or_else(|| format!("unknown severity {text:?}: expected low, medium, high or critical"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{text:?} is not a rate between 0 and 1, e.g. 0.1"))
}

#[derive(Debug, Args)]
struct LakeArgs {
    /// The lake, e.g. s3://lake/pipeline (default: file://DATA_DIR/lake).
    #[arg(long, env = "LAMBDA_LAKE_URL")]
    lake_url: Option<String>,
    /// S3 endpoint for an s3:// lake on MinIO or another S3-compatible server, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "LAMBDA_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region, e.g. us-east-1.
    #[arg(long, env = "LAMBDA_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
}

impl SharedArgs {
    /// The alert rules: the file's (or the defaults), with the flags' replacing theirs.
    fn alert_rules(&self) -> anyhow::Result<AlertRules> {
        let rules = match &self.alerts_file {
            None => AlertRules::defaults(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("alert rules in {}", path.display()))?
            }
        };
        let flags = &self.alerts;
        Ok(rules.with_overrides(&AlertOverrides {
            sensor_range: flags.sensor_range.clone(),
            offline_after_ms: flags.offline_after.map(|d| d.as_millis() as i64),
            severities: flags.severities.clone(),
            error_rate: flags.error_rate,
        }))
    }

    pub(crate) fn shared(&self) -> anyhow::Result<Shared> {
        let lake = &self.lake;
        Ok(Shared {
            alert_rules: self.alert_rules()?,
            admin_token: self.admin_token.clone(),
            data_dir: self.data_dir.clone(),
            log_url: self.log_url.clone(),
            lake_url: lake.lake_url.clone(),
            lake_options: lambda_lake::store::s3_options(
                &lake.s3_region,
                lake.s3_endpoint.as_deref(),
            ),
            partitions: self.partitions,
            allowed_lateness_ms: self.allowed_lateness.as_millis() as i64,
            idle_timeout: self.idle_timeout,
            architecture: self.architecture,
            batch_engine: lambda_batch::BatchEngine::from_flags(
                &self.batch_engine.name,
                self.batch_engine.spark_url.as_deref(),
            )?
            .with_spark_timeout(self.batch_engine.spark_timeout),
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct TrafficArgs {
    /// Lines per second, e.g. 200.
    #[arg(long, env = "LAMBDA_RATE", default_value_t = 200.0)]
    pub(crate) rate: f64,
    /// Seed: the same seed gives the same events (default: from the clock).
    #[arg(long, env = "LAMBDA_SEED")]
    seed: Option<u64>,
    /// Share of events sent 2–10 minutes late, e.g. 0.01.
    #[arg(long, env = "LAMBDA_LATE_FRACTION", default_value_t = 0.01)]
    late_fraction: f64,
    /// Share of lines that resend an earlier event (same event_id), e.g. 0.01.
    #[arg(long, env = "LAMBDA_DUPLICATE_FRACTION", default_value_t = 0.01)]
    duplicate_fraction: f64,
    /// Share of malformed lines, e.g. 0.005.
    #[arg(long, env = "LAMBDA_MALFORMED_FRACTION", default_value_t = 0.005)]
    malformed_fraction: f64,
}

impl TrafficArgs {
    /// The generator's settings (the seed from the clock if none is given).
    pub(crate) fn settings(&self) -> GeneratorSettings {
        GeneratorSettings {
            rate: self.rate,
            seed: self
                .seed
                .unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64),
            late_fraction: self.late_fraction,
            duplicate_fraction: self.duplicate_fraction,
            malformed_fraction: self.malformed_fraction,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn rules(args: &[&str]) -> Result<AlertRules, String> {
        #[derive(Debug, clap::Parser)]
        struct Flags {
            #[command(flatten)]
            shared: SharedArgs,
        }
        let flags = <Flags as clap::Parser>::try_parse_from(["lambda"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        flags.shared.alert_rules().map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn alert_flags_replace_the_rules_they_name() {
        assert_eq!(rules(&[]).unwrap(), AlertRules::defaults());
        let set = rules(&[
            "--alert-sensor-range",
            "temperature:10:20:2,pressure:990:1030",
            "--alert-offline-after",
            "90s",
            "--alert-severities",
            "critical",
            "--alert-error-rate",
            "0.25",
        ])
        .unwrap();
        let ranges: Vec<(&str, f64, f64, u32)> = set
            .sensor_range
            .iter()
            .map(|r| (r.sensor.as_str(), r.min, r.max, r.consecutive))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("temperature", 10.0, 20.0, 2),
                ("pressure", 990.0, 1030.0, 3)
            ]
        );
        assert_eq!(set.device_offline.unwrap().after_ms, 90_000);
        let alarm = set.alarm.unwrap();
        assert_eq!(alarm.severities, vec![Severity::Critical]);
        assert_eq!(alarm.clear_after_ms, 600_000, "kept from the defaults");
        let errors = set.page_error_rate.unwrap();
        assert_eq!((errors.threshold, errors.min_views), (0.25, 20));
    }

    #[test]
    fn bad_alert_flags_are_named() {
        let check = |args: &[&str], part: &str| {
            let error = rules(args).unwrap_err();
            assert!(error.contains(part), "{args:?}: {error}");
        };
        check(
            &["--alert-sensor-range", "temperature:30:20"],
            "min 30 is above max 20",
        );
        check(
            &["--alert-severities", "urgent"],
            "unknown severity \"urgent\"",
        );
        check(&["--alert-error-rate", "1.5"], "not a rate between 0 and 1");
        check(&["--alert-offline-after", "5x"], "unknown duration unit");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.toml");
        std::fs::write(&file, "[alarm]\nseverity = [\"high\"]\n").unwrap();
        check(&["--alerts-file", file.to_str().unwrap()], "severity");
    }

    #[test]
    fn the_batch_engine_flags() {
        #[derive(Debug, clap::Parser)]
        struct Flags {
            #[command(flatten)]
            shared: SharedArgs,
        }
        let engine = |args: &[&str]| -> Result<lambda_batch::BatchEngine, String> {
            let flags = <Flags as clap::Parser>::try_parse_from(["lambda"].iter().chain(args))
                .map_err(|e| e.to_string())?;
            flags
                .shared
                .shared()
                .map(|s| s.batch_engine)
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(engine(&[]).unwrap(), lambda_batch::BatchEngine::DuckDb);
        assert_eq!(
            engine(&["--batch-engine", "spark", "--spark-url", "sc://spark:15002"]).unwrap(),
            lambda_batch::BatchEngine::Spark(lambda_batch::spark::SparkConfig::new(
                "sc://spark:15002"
            ))
        );
        let slow = engine(&[
            "--batch-engine",
            "spark",
            "--spark-url",
            "sc://spark",
            "--spark-timeout",
            "30m",
        ])
        .unwrap();
        assert!(matches!(slow, lambda_batch::BatchEngine::Spark(c) if c.timeout.as_secs() == 1800));
        let error = engine(&["--spark-timeout", "0s"]).unwrap_err();
        assert!(error.contains("above 0"), "{error}");
        let error = engine(&["--batch-engine", "spark"]).unwrap_err();
        assert!(error.contains("needs --spark-url"), "{error}");
        let error = engine(&["--batch-engine", "flink"]).unwrap_err();
        assert!(
            error.contains("flink") && error.contains("duckdb"),
            "{error}"
        );
        assert_eq!(
            engine(&["--batch-engine", "auto", "--spark-url", "sc://spark:15002"]).unwrap(),
            lambda_batch::BatchEngine::Auto(lambda_batch::spark::SparkConfig::new(
                "sc://spark:15002"
            ))
        );
        let error = engine(&["--batch-engine", "auto"]).unwrap_err();
        assert!(error.contains("needs --spark-url"), "{error}");
        let error = engine(&["--batch-engine", "spark", "--spark-url", "http://x"]).unwrap_err();
        assert!(error.contains("sc://"), "{error}");
    }
}
