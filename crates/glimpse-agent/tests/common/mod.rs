//! A scripted OpenAI-compatible endpoint on 127.0.0.1: it answers each request with
//! the next scripted reply (status and body) and keeps the request bodies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

pub enum Reply {
    /// A chat completion whose message content is this text.
    Content(String),
    /// Any status and body.
    Raw(u16, String),
    /// Accept the connection and never answer.
    Hang,
}

pub struct Endpoint {
    pub url: String,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub fn completion(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    })
    .to_string()
}

/// Serves `replies` in order, one per connection, then stops.
pub fn serve(replies: Vec<Reply>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for reply in replies {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim().to_lowercase();
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if l.is_empty() {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                seen.lock().unwrap().push(v);
            }
            let (status, text) = match reply {
                Reply::Content(c) => (200, completion(&c)),
                Reply::Raw(s, b) => (s, b),
                Reply::Hang => {
                    std::thread::sleep(std::time::Duration::from_secs(30));
                    continue;
                }
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    Endpoint { url, requests }
}
