//! The server on a real socket: a slow client gets 408 and does not block others; a
//! full queue answers 429 with Retry-After and nothing else fails; stopping lets an
//! in-flight request finish.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// Starts a server on a free port with `edit` applied; returns its address and the
/// trigger that stops it, and the task to await for its exit.
async fn start(
    edit: impl FnOnce(&mut glimpse_serve::ServeConfig),
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config();
    cfg.addr = addr;
    edit(&mut cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        glimpse_serve::serve_on(listener, cfg, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..200 {
        if let Ok((200, _)) = http(addr, "GET", "/health", b"").await {
            return (addr, stop_tx, task);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become ready");
}

/// One HTTP/1.1 request on its own connection; the status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        read_response(&mut s)
    })
    .await
    .unwrap()
}

fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_408_and_others_are_served_meanwhile() {
    let (addr, stop, task) = start(|c| c.body_timeout = Duration::from_secs(1)).await;
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!("POST /v1/embeddings HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"input\": ");
        s.write_all(head.as_bytes()).unwrap();
        // ... and nothing more.
        read_response(&mut s).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = http(
        addr,
        "POST",
        "/v1/embeddings",
        br#"{"input": "a red circle"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "a good request while a slow client waits");
    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("timed out"), "{text}");
    let (status, _) = http(addr, "GET", "/health", b"").await.unwrap();
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_with_429_only() {
    let (addr, stop, task) = start(|c| {
        c.queue_capacity = 2;
        c.max_batch = 1;
    })
    .await;
    let body = serde_json::json!({"image": data_url("blue-circle"), "max_tokens": 30}).to_string();
    let mut clients = Vec::new();
    for _ in 0..48 {
        let body = body.clone();
        clients.push(tokio::spawn(async move {
            http(addr, "POST", "/v1/caption", body.as_bytes())
                .await
                .unwrap()
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for c in clients {
        let (status, text) = c.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                busy += 1;
                assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
            }
            other => panic!("status {other} under overload: {text}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "{ok} answered, {busy} refused");
    let (status, _) = http(addr, "POST", "/v1/caption", body.as_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "after the overload");
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_an_in_flight_request_finish() {
    let (addr, stop, task) = start(|_| {}).await;
    let body = br#"{"input": "a green star"}"#.to_vec();
    let inflight = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!("POST /v1/embeddings HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body[..5]).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        s.write_all(&body[5..]).unwrap();
        read_response(&mut s).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap(); // while the request's body is still arriving
    let (status, text) = inflight.await.unwrap();
    assert_eq!(status, 200, "{text}");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server exits")
        .unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the server still accepts connections"
    );
}
