//! Where request images may come from: `data:` URLs always; `http(s)` only with
//! fetching allowed and never from private addresses; local files only under the
//! directory the operator names.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_refuses_private_addresses_and_files_stay_under_their_root() {
    let state = state_with(|c| {
        c.models.truncate(2);
        c.images.allow_fetch = true;
        c.images.local_root = Some(repo("examples/synth").into());
    });
    for url in [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.7/x.png",
        "http://[::1]/x.png",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let r = post(&state, "/v1/caption", json!({"image": url})).await;
        assert_eq!(r.status, 422, "{url}: {}", r.text());
        assert!(
            r.message().contains("private address"),
            "{url}: {}",
            r.message()
        );
    }
    let r = post(
        &state,
        "/v1/caption",
        json!({"image": "ftp://example.com/x.png"}),
    )
    .await;
    assert_eq!(r.status, 422);

    // A file under the root is read; one outside it, or a path escaping it, is not.
    let inside = image_path("blue-circle");
    let r = post(&state, "/v1/caption", json!({"image": inside})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let direct = post(
        &state,
        "/v1/caption",
        json!({"image": data_url("blue-circle")}),
    )
    .await;
    assert_eq!(r.json()["text"], direct.json()["text"]);
    let r = post(
        &state,
        "/v1/caption",
        json!({"image": format!("file://{inside}")}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for outside in [
        repo("examples/images/cat.png"),
        format!("{}/../images/cat.png", repo("examples/synth")),
        "/etc/hostname".into(),
    ] {
        let r = post(&state, "/v1/caption", json!({"image": outside})).await;
        assert_eq!(r.status, 422, "{outside}: {}", r.text());
        assert!(
            r.message().contains("outside"),
            "{outside}: {}",
            r.message()
        );
    }
    let r = post(
        &state,
        "/v1/caption",
        json!({"image": repo("examples/synth/missing.png")}),
    )
    .await;
    assert_eq!(r.status, 422);
}
