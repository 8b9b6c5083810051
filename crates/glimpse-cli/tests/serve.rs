//! `glimpse serve` as a process: search over an index built by `glimpse index build`
//! (its answers equal `glimpse search`), clip-retrieval's routes, bad flags refused
//! before binding, and SIGTERM ending the server cleanly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status and body of one request.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn post(port: u16, path: &str, body: Value) -> Value {
    let (status, text) = http(port, "POST", path, &body.to_string()).expect("the server answers");
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("serve")
        .args(["--port", &port.to_string()])
        .args(args)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, _)) = http(port, "GET", "/health", "") {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("glimpse serve did not become ready on port {port}");
}

#[test]
fn search_routes_answer_as_glimpse_search_and_sigterm_stops_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let idx = idx.to_str().unwrap();
    json(&[
        "index",
        "build",
        "--model",
        "models/clip-synth",
        "--data",
        "examples/synth",
        "--out",
        idx,
        "--json",
    ]);
    let port = free_port();
    let mut server = start(&["--index", idx], port);

    let cli = json(&[
        "search",
        "--index",
        idx,
        "--text",
        "a blue circle",
        "--k",
        "3",
        "--json",
    ]);
    let served = post(port, "/v1/search", json!({"text": "a blue circle", "k": 3}));
    let keys = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&served), keys(&cli));
    assert_eq!(keys(&served)[0], "blue-circle");

    let cli = json(&[
        "search",
        "--index",
        idx,
        "--text",
        "a cyan heart",
        "--k",
        "2",
        "--rerank",
        "5",
        "--json",
    ]);
    let served = post(
        port,
        "/v1/search",
        json!({"text": "a cyan heart", "k": 2, "rerank": 5}),
    );
    assert_eq!(keys(&served), keys(&cli));
    for (a, b) in served["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cli["results"].as_array().unwrap())
    {
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
    }

    // clip-retrieval's front end: the index list, then a text query.
    let (status, list) = http(port, "GET", "/indices-list", "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap(),
        json!(["idx"])
    );
    let knn = post(
        port,
        "/knn-service",
        json!({"text": "a blue circle", "modality": "image", "num_images": 2, "indice_name": "idx"}),
    );
    let first = &knn.as_array().unwrap()[0];
    assert_eq!(first["key"], "blue-circle");
    assert!(first["url"].as_str().unwrap().ends_with("blue-circle.png"));
    assert!(first["similarity"].as_f64().unwrap() > 0.5);

    // SIGTERM: the server stops and exits 0.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_flags_are_refused_before_serving() {
    let port = free_port().to_string();
    for (args, word) in [
        (
            vec!["serve", "--port", &port, "--index", "examples"],
            "not an index",
        ),
        (
            vec!["serve", "--port", &port, "--runs", "examples"],
            "not a training run",
        ),
        (
            vec!["serve", "--port", &port, "--reports", "examples"],
            "not an evaluation report",
        ),
        (
            vec!["serve", "--port", &port, "--max-batch", "0"],
            "--max-batch",
        ),
        (
            vec!["serve", "--port", &port, "--allow-files", "nowhere"],
            "not a directory",
        ),
        (
            vec![
                "serve",
                "--port",
                &port,
                "--model",
                "tools/fixtures/missing-model",
            ],
            "missing-model",
        ),
        (
            vec![
                "serve",
                "--port",
                &port,
                "--model",
                "models/clip-synth",
                "--quantize",
                "q4",
            ],
            "q4",
        ),
        (
            vec![
                "loadtest",
                "--url",
                "http://10.1.2.3:8080",
                "--route",
                "embed-text",
            ],
            "loopback",
        ),
    ] {
        let err = fails(&args);
        assert!(err.contains(word), "{args:?}: {err}");
    }
}
