//! Requests to the pipeline's HTTP API, and waiting for it.

use serde_json::Value;

pub(crate) use lambda_testkit::eventually;

/// Waits until the speed layer has read everything in the log (every
/// partition's lag 0 in `/api/v1/status`); returns that status.
pub(crate) async fn speed_caught_up(client: &reqwest::Client, base: &str) -> Value {
    eventually(
        "the speed layer catching up",
        std::time::Duration::from_secs(30),
        || async {
            let status = get(client, format!("{base}/api/v1/status")).await;
            let partitions = status["speed"]["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !partitions.is_empty() && partitions.iter().all(|p| p["lag"] == 0) {
                Ok(status)
            } else {
                Err(status["speed"]["partitions"].to_string())
            }
        },
    )
    .await
}

/// The body of a GET as text (e.g. `/metrics`), which must answer 200.
pub(crate) async fn text(client: &reqwest::Client, url: String) -> String {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

/// Sends `request`, once more if the first try found its pooled connection
/// closed under it: every server closes a keep-alive connection idle for
/// 10 s, and a request sent on one in that very instant gets no answer at
/// all (hyper's `IncompleteMessage`; nothing of it was read, so sending it
/// again does not send it twice). Any other failure fails the test.
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    let again = request.try_clone().expect("a body that can be sent again");
    match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_request() && error.status().is_none() => again.send().await.unwrap(),
        Err(error) => panic!("{error}"),
    }
}

pub(crate) async fn get(client: &reqwest::Client, url: String) -> Value {
    let response = send(client.get(&url)).await;
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// POSTs `lines` to an ingest endpoint in NDJSON batches of 500; returns
/// (accepted, rejected) as the collector answered.
pub(crate) async fn post_lines(
    client: &reqwest::Client,
    base: &str,
    lines: &[Vec<u8>],
) -> (u64, usize) {
    let (mut accepted, mut rejected) = (0, 0);
    for chunk in lines.chunks(500) {
        let body: Vec<u8> = chunk
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        let response = send(client.post(format!("{base}/api/v1/events")).body(body)).await;
        assert_eq!(response.status(), 202);
        let json: Value = response.json().await.unwrap();
        accepted += json["accepted"].as_u64().unwrap();
        rejected += json["rejected_count"].as_u64().unwrap() as usize;
    }
    (accepted, rejected)
}

/// The JSON body of a GET that must answer 400 (a parameter refused).
pub(crate) async fn refused(client: &reqwest::Client, url: String) -> Value {
    let response = send(client.get(&url)).await;
    assert_eq!(response.status(), 400, "{url}");
    response.json().await.unwrap()
}
