//! Request images: `data:` URLs always; `http(s)` URLs when the operator allows
//! fetching (public addresses only, with a timeout and a size limit); local files
//! under one directory when the operator names it.

use std::io::Read;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;

use base64::Engine;
use image::RgbImage;

use crate::config::ImagePolicy;
use crate::error::{ApiError, ApiResult};

/// Decodes the image that `url` (the request field `param`) names.
pub fn load(url: &str, param: &str, policy: &ImagePolicy) -> ApiResult<RgbImage> {
    let bytes = fetch_bytes(url, param, policy)?;
    decode(&bytes, param)
}

/// Decodes image file bytes; the error names the field.
pub fn decode(bytes: &[u8], param: &str) -> ApiResult<RgbImage> {
    // The decoder's message already names `param`.
    glimpse_data::decode_image(bytes, param).map_err(|e| ApiError {
        param: Some(param.to_string()),
        ..ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    })
}

/// Base64 without a `data:` prefix (clip-retrieval's `image` field).
pub fn decode_base64(text: &str, param: &str, policy: &ImagePolicy) -> ApiResult<RgbImage> {
    let bytes = base64_bytes(text, param, policy)?;
    decode(&bytes, param)
}

fn base64_bytes(text: &str, param: &str, policy: &ImagePolicy) -> ApiResult<Vec<u8>> {
    let text = text.trim();
    if text.len() / 4 * 3 > policy.max_image_bytes {
        return Err(ApiError::invalid(
            param,
            format!(
                "the image is larger than the server accepts ({} bytes)",
                policy.max_image_bytes
            ),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ApiError::invalid(param, format!("invalid base64: {e}")))
}

fn fetch_bytes(url: &str, param: &str, policy: &ImagePolicy) -> ApiResult<Vec<u8>> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, payload)) = rest.split_once(',') else {
            return Err(ApiError::invalid(param, "a data: URL without a `,`"));
        };
        if !meta.starts_with("image/") {
            return Err(ApiError::invalid(
                param,
                format!(
                    "a data: URL of type {:?}, not an image",
                    meta.split(';').next().unwrap_or("")
                ),
            ));
        }
        if !meta.ends_with(";base64") {
            return Err(ApiError::invalid(
                param,
                "a data: URL must be base64-encoded",
            ));
        }
        return base64_bytes(payload, param, policy);
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        if !policy.allow_fetch {
            return Err(ApiError::invalid(
                param,
                "this server does not fetch http(s) URLs (start it with --allow-fetch); send a data: URL",
            ));
        }
        return fetch_http(url, param, policy);
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    let Some(root) = &policy.local_root else {
        return Err(ApiError::invalid(
            param,
            "expected a data:image/...;base64 URL (local files need --allow-files DIR)",
        ));
    };
    read_local(Path::new(path), root, param, policy)
}

fn read_local(path: &Path, root: &Path, param: &str, policy: &ImagePolicy) -> ApiResult<Vec<u8>> {
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| ApiError::invalid(param, format!("{}: {e}", path.display())))?;
    let root = std::fs::canonicalize(root)
        .map_err(|e| ApiError::internal(format!("--allow-files: {e}")))?;
    if !resolved.starts_with(&root) {
        return Err(ApiError::invalid(
            param,
            format!(
                "{} is outside the directory this server reads ({})",
                path.display(),
                root.display()
            ),
        ));
    }
    let file = std::fs::File::open(&resolved)
        .map_err(|e| ApiError::invalid(param, format!("{}: {e}", path.display())))?;
    read_limited(file, param, policy.max_image_bytes)
}

fn read_limited(r: impl Read, param: &str, max: usize) -> ApiResult<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ApiError::invalid(param, format!("reading the image: {e}")))?;
    if buf.len() > max {
        return Err(ApiError::invalid(
            param,
            format!("the image is larger than the server accepts ({max} bytes)"),
        ));
    }
    Ok(buf)
}

/// Loopback, private, link-local, unspecified, multicast and documentation addresses:
/// a URL that resolves to one of them is refused, so a request cannot make the server
/// probe its own network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

fn fetch_http(url: &str, param: &str, policy: &ImagePolicy) -> ApiResult<Vec<u8>> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| ApiError::invalid(param, format!("{url}: {e}")))?;
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("cannot resolve the host of {url}"),
        ));
    }
    if let Some(a) = addrs.iter().find(|a| is_private(a.ip())) {
        return Err(ApiError::invalid(
            param,
            format!(
                "{url} resolves to {}, a private address; this server fetches public URLs only",
                a.ip()
            ),
        ));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(policy.fetch_timeout))
        .max_redirects(0)
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| ApiError::invalid(param, format!("fetching {url}: {e}")))?;
    let (_, body) = resp.into_parts();
    read_limited(body.into_reader(), param, policy.max_image_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ImagePolicy {
        ImagePolicy {
            allow_fetch: false,
            local_root: None,
            fetch_timeout: std::time::Duration::from_secs(1),
            max_image_bytes: 1 << 20,
        }
    }

    #[test]
    fn private_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn data_urls_are_checked() {
        let p = policy();
        let e = load("data:text/plain;base64,aGVsbG8=", "image", &p).unwrap_err();
        assert!(e.message.contains("not an image"), "{}", e.message);
        let e = load("data:image/png;base64,@@@", "image", &p).unwrap_err();
        assert!(e.message.contains("base64"), "{}", e.message);
        let e = load("data:image/png;base64,aGVsbG8=", "image", &p).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        let e = load("http://example.com/a.png", "image", &p).unwrap_err();
        assert!(e.message.contains("--allow-fetch"), "{}", e.message);
        let e = load("/etc/passwd", "image", &p).unwrap_err();
        assert!(e.message.contains("--allow-files"), "{}", e.message);
        let big = "A".repeat(2 << 20);
        let e = load(&format!("data:image/png;base64,{big}"), "image", &p).unwrap_err();
        assert!(e.message.contains("larger"), "{}", e.message);
    }
}
