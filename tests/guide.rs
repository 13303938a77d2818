//! `docs/lambda-vs-kappa.md` runs as written: every `sh` block, in order,
//! under the directive before it (`<!-- guide: … -->`), with what each step
//! tells the learner to look for checked here. Substitutions: the test's
//! build of `lambda` is first on `PATH` (instead of step 0's release build),
//! and a free port replaces 8080 (`LAMBDA_LISTEN`, `LAMBDA_URL`, and
//! `localhost:8080` in the commands).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lambda_testkit::eventually_blocking;
use serde_json::Value;

const GUIDE: &str = include_str!("../docs/lambda-vs-kappa.md");

/// One `sh` block and the directive before it.
#[derive(Debug)]
struct Block {
    directive: String,
    code: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut directive: Option<String> = None;
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix("<!-- guide:") {
            directive = Some(rest.trim_end_matches("-->").trim().to_string());
        } else if line.trim() == "```sh" {
            let code: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let directive = directive
                .take()
                .unwrap_or_else(|| panic!("a sh block without a guide directive: {code:?}"));
            out.push(Block {
                directive,
                code: code.join("\n"),
            });
        }
    }
    out
}

fn attribute<'a>(directive: &'a str, name: &str) -> Option<&'a str> {
    let at = directive.find(&format!("{name}="))? + name.len() + 1;
    let rest = &directive[at..];
    match rest.strip_prefix('\'') {
        Some(quoted) => quoted.split('\'').next(),
        None => rest.split_whitespace().next(),
    }
}

struct Runner {
    dir: PathBuf,
    port: u16,
    path: String,
    background: Vec<Child>,
    step: usize,
}

impl Runner {
    fn script(&mut self, code: &str) -> PathBuf {
        self.step += 1;
        let code = code.replace("localhost:8080", &format!("127.0.0.1:{}", self.port));
        let path = self.dir.join(format!(".step-{}.sh", self.step));
        std::fs::write(&path, format!("set -e\n{code}\n")).unwrap();
        path
    }

    fn command(&self, script: &Path) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(script)
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .env("LAMBDA_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("LAMBDA_URL", format!("http://127.0.0.1:{}", self.port))
            .env_remove("LAMBDA_ADMIN_TOKEN");
        command
    }

    fn run(&mut self, code: &str) -> String {
        let script = self.script(code);
        let output = self.command(&script).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{code}\nfailed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn start(&mut self, code: &str) {
        let script = self.script(code);
        let log = std::fs::File::create(self.dir.join(format!(".step-{}.log", self.step))).unwrap();
        let child = self
            .command(&script)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.background.push(child);
        eventually_blocking(
            &format!("{code} serving"),
            Duration::from_secs(60),
            || match healthy(self.port) {
                true => Ok(()),
                false => Err(self.log()),
            },
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!(".step-{}.log", self.step)))
            .unwrap_or_default()
    }

    /// Runs a command that stops the background process, and waits for it to exit.
    fn kill(&mut self, code: &str) {
        self.run(code);
        for child in &mut self.background {
            eventually_blocking(
                &format!("{code} stopping the demo"),
                Duration::from_secs(30),
                || match child.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
        self.background.clear();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `GET /healthz` on `port` answers 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut answer = String::new();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .and_then(|_| stream.read_to_string(&mut answer))
        .is_ok()
        && answer.split_whitespace().nth(1) == Some("200")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every JSON document in `text` (curl prints them back to back).
fn documents(text: &str) -> Vec<Value> {
    let start = text.find('{').unwrap_or(text.len());
    serde_json::Deserializer::from_str(&text[start..])
        .into_iter::<Value>()
        .map(|v| v.unwrap_or_else(|e| panic!("{e}: {text}")))
        .collect()
}

fn purchases(answer: &Value) -> (u64, i64) {
    let buckets = answer["buckets"].as_array().unwrap();
    (
        buckets
            .iter()
            .map(|b| b["purchases"].as_u64().unwrap())
            .sum(),
        buckets
            .iter()
            .map(|b| b["revenue_cents"].as_i64().unwrap())
            .sum(),
    )
}

/// What the guide tells the learner to look for at each step.
fn check(id: &str, out: &str) {
    let docs = || documents(out);
    let last = || {
        docs()
            .pop()
            .unwrap_or_else(|| panic!("{id}: no JSON in {out}"))
    };
    match id {
        "status" => {
            let status = last();
            assert_eq!(status["architecture"], "lambda");
            assert!(status["speed"]["late_ledger"].is_object(), "{status}");
            assert!(
                status["batch"]["boundary"].is_null(),
                "no run yet: {status}"
            );
        }
        "batch" => {
            let report = last();
            assert_eq!(report["committed"], true, "{report}");
            assert!(report["boundary"].is_i64(), "{report}");
        }
        "boundary" => {
            let answer = last();
            assert!(answer["boundary"].is_i64());
            let layers: Vec<&str> = answer["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["layer"].as_str().unwrap())
                .collect();
            assert!(
                layers.contains(&"batch") && layers.contains(&"speed"),
                "{layers:?}"
            );
        }
        "late-send" => assert_eq!(last()["accepted"], 1, "{out}"),
        "late-before" | "kappa-late" => {
            let answer = last();
            assert_eq!(purchases(&answer).0, 0, "{id}: {answer}");
            if id == "kappa-late" {
                assert!(answer["boundary"].is_null());
                assert!(
                    answer["buckets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|b| b["layer"] == "speed")
                );
            }
        }
        "heal" | "recovered" => assert_eq!(purchases(&last()), (1, 4200), "{id}: {out}"),
        "compare" => {
            for view in ["funnel", "pages", "iot"] {
                let row: Vec<&str> = out
                    .lines()
                    .map(str::split_whitespace)
                    .map(Iterator::collect::<Vec<_>>)
                    .find(|cols| cols.len() == 5 && cols[0] == view)
                    .unwrap_or_else(|| panic!("no {view} row in\n{out}"));
                assert_eq!(row[4], "0", "{view}: nothing unexplained\n{out}");
            }
            assert!(
                out.lines()
                    .any(|l| l.trim_start().starts_with("funnel") && l.contains(" late")),
                "the late purchase is a named difference\n{out}"
            );
        }
        "kappa-status" => {
            let kappa = last();
            assert_eq!(kappa["version"], 1, "{kappa}");
            assert_eq!(kappa["replay"]["state"], "switched");
        }
        "replay" => assert!(out.contains("switched to version 2"), "{out}"),
        "replay-wide" => {
            assert!(out.contains("switched to version 3"), "{out}");
            assert_eq!(purchases(&last()), (1, 4200), "{out}");
        }
        "cleanup" => {}
        other => panic!("the guide has a step {other} this test does not check"),
    }
}

#[test]
fn the_lambda_vs_kappa_guide_runs_as_written() {
    let blocks = blocks(GUIDE);
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_lambda")).parent().unwrap();
    let mut runner = Runner {
        dir: dir.path().to_path_buf(),
        port: free_port(),
        path: format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        background: Vec::new(),
        step: 0,
    };
    let mut checked = Vec::new();
    for block in &blocks {
        let directive = block.directive.as_str();
        let kind = directive.split_whitespace().next().unwrap_or("");
        match kind {
            "build" => assert_eq!(
                block.code, "cargo build --release\nexport PATH=\"$PWD/target/release:$PATH\"",
                "the build step (the test uses its own build)"
            ),
            "background" => runner.start(&block.code),
            "kill" => runner.kill(&block.code),
            "run" => {
                let id = attribute(directive, "id").expect("run blocks have an id");
                let out = match attribute(directive, "wait-for") {
                    None => runner.run(&block.code),
                    Some(wanted) => eventually_blocking(
                        &format!("{id}: {wanted}"),
                        Duration::from_secs(60),
                        || {
                            let out = runner.run(&block.code);
                            match out.contains(wanted) {
                                true => Ok(out),
                                false => Err(out.chars().take(2000).collect()),
                            }
                        },
                    ),
                };
                check(id, &out);
                checked.push(id.to_string());
            }
            other => panic!("unknown guide directive {other:?}"),
        }
    }
    let expected = [
        "status",
        "batch",
        "boundary",
        "late-send",
        "late-before",
        "heal",
        "recovered",
        "compare",
        "kappa-status",
        "kappa-late",
        "replay",
        "replay-wide",
        "cleanup",
    ];
    assert_eq!(checked, expected, "the guide's steps, in order");
    assert!(!dir.path().join("lesson").exists(), "cleaned up");
}
