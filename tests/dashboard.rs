//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! installed by the test command) loads `/` from the running demo fed a
//! seeded hour of events and one batch run. Every time chart must have drawn
//! data points, shaded both batch and speed buckets, and drawn the boundary
//! B where the API puts it; the layer panel shows B. (`/?live=0` renders
//! once: a live page's alert stream never lets virtual time end.) A screenshot is saved
//! (`LAMBDA_SCREENSHOT=docs/dashboard.png` writes the one in the README).

use std::path::{Path, PathBuf};
use std::process::Command;

use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_pipeline::demo::Demo;

use crate::common::{demo_config, post_lines, speed_caught_up};

const T0: i64 = 1_767_225_600_000;
const CHARTS: [&str; 7] = [
    "chart-funnel",
    "chart-pages-desktop",
    "chart-pages-mobile",
    "chart-pages-tablet",
    "chart-iot-temperature",
    "chart-iot-humidity",
    "chart-iot-pressure",
];

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "no /usr/bin/chromium: run ./infra/test.sh, which installs Debian's chromium"
    );
    path
}

/// Runs headless Chromium on `url` with `args` (after scripts had 20 s of virtual time).
fn browse(url: &str, profile: &Path, args: &[String]) -> std::process::Output {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1650",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The attributes of the element with `id` in a dumped DOM.
fn attributes(dom: &str, id: &str) -> Vec<(String, String)> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    let tag = &dom[start..end];
    let mut out = Vec::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap().to_string();
        let value_start = eq + 2;
        let value_end = value_start + rest[value_start..].find('"').unwrap();
        out.push((name, rest[value_start..value_end].to_string()));
        rest = &rest[value_end + 1..];
    }
    out
}

fn attribute(dom: &str, id: &str, name: &str) -> String {
    attributes(dom, id)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{id} has no {name}: {:?}", attributes(dom, id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_both_layers_and_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(demo_config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();
    // About 50 minutes of event time, then a batch run: B falls a minute
    // before the newest event, so the last hour has batch and speed buckets.
    let mut generator = Generator::new(GeneratorConfig {
        seed: 42,
        start_ms: T0,
        rate: 4.0,
        late_fraction: 0.01,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let lines: Vec<Vec<u8>> = (0..12_000).map(|_| generator.next_line().bytes).collect();
    post_lines(&client, &base, &lines).await;
    demo.run_batch().await.unwrap();
    // Let the speed layer catch up, then take the boundary the API reports.
    let status = speed_caught_up(&client, &base).await;
    let boundary = status["batch"]["boundary"].as_i64().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let output = browse(
        &format!("{base}/?live=0"),
        profile.path(),
        &["--dump-dom".into()],
    );
    let dom = String::from_utf8(output.stdout).unwrap();
    assert_eq!(attribute(&dom, "dashboard", "data-ready"), "1", "rendered");
    for chart in CHARTS {
        let number = |name: &str| -> u64 { attribute(&dom, chart, name).parse().unwrap() };
        assert!(number("data-points") > 20, "{chart}: points drawn");
        assert!(number("data-batch-buckets") > 0, "{chart}: batch buckets");
        assert!(number("data-speed-buckets") > 0, "{chart}: speed buckets");
        assert_eq!(
            attribute(&dom, chart, "data-boundary"),
            boundary.to_string(),
            "{chart}"
        );
        assert_eq!(
            attribute(&dom, chart, "data-boundary-drawn"),
            "1",
            "{chart}: B drawn"
        );
        assert!(dom.contains(&format!("id=\"{chart}\"")));
    }
    assert!(
        dom.matches("<canvas").count() >= CHARTS.len(),
        "a canvas per chart"
    );
    // Lambda vs kappa over the hour shown: compared, every difference explained.
    assert_eq!(attribute(&dom, "compare", "data-compared"), "1");
    let compare_number = |name: &str| -> u64 { attribute(&dom, "compare", name).parse().unwrap() };
    assert!(compare_number("data-buckets") > 20, "buckets compared");
    assert!(
        compare_number("data-explained") > 0,
        "late events explain some buckets"
    );
    assert_eq!(compare_number("data-unexplained"), 0);
    assert!(
        dom.contains("kappa: bytes read"),
        "the cost of each side is shown"
    );
    let b_text = chrono_text(boundary);
    assert!(dom.contains(&b_text), "the layer panel shows B ({b_text})");

    // The screenshot.
    let shot = std::env::var_os("LAMBDA_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    let _ = std::fs::remove_file(&shot);
    browse(
        &format!("{base}/?live=0"),
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "a PNG at {}",
        shot.display()
    );
    assert!(
        png.len() > 50_000,
        "a screenshot with content: {} bytes",
        png.len()
    );
    demo.stop().await.unwrap();
}

/// `clock()` of the dashboard: `YYYY-MM-DD HH:MM:SSZ`.
fn chrono_text(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}
