//! UpgradeFromUrl: the node pulls a bundle over HTTPS, resumes after a dropped connection,
//! refuses a 404, and copies the chunks the booted slot already has instead of fetching them.

use super::engine::*;
use super::tests::{Fx, TestCtx};
use basalt_bootloader::Slot;
use std::sync::{Arc, Mutex};

/// An HTTPS server (self-signed certificate) for one bundle at `/b`, with Range support,
/// whose first answer is cut after `drop_after` body bytes; any other path is a 404.
async fn https_server(data: Arc<Vec<u8>>, drop_after: usize) -> (u16, Arc<Mutex<Vec<u64>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = crate::api::tls::MaintenanceCert::generate(vec!["localhost".into()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s2 = starts.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if !head.starts_with("get /b ") {
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = tls.shutdown().await;
                continue;
            }
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .unwrap_or("0-")
                .trim()
                .to_string();
            let (a, b) = range.split_once('-').unwrap();
            let len = data.len();
            let from: usize = a.parse().unwrap();
            let to: usize = b.parse::<usize>().map(|b| b + 1).unwrap_or(len).min(len);
            s2.lock().unwrap().push(from as u64);
            let reply = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                to - 1,
                to - from
            );
            let _ = tls.write_all(reply.as_bytes()).await;
            let end = if first {
                from.saturating_add(drop_after).min(to)
            } else {
                to
            };
            first = false;
            let _ = tls.write_all(&data[from..end]).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, starts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_fetch_resumes_after_a_drop_and_refuses_a_404() {
    use super::fetch::{FetchError, FetchOptions, Phase, upgrade_from_url};
    let fx = Fx::new();
    let b = Arc::new(fx.bundle("qemu-arm64", "1.2.0"));
    let (port, starts) = https_server(b.clone(), 50_000).await;
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    let fetch = FetchOptions {
        backoff: std::time::Duration::from_millis(10),
        ..FetchOptions::default()
    };
    let mut events = Vec::new();
    let url = format!("https://localhost:{port}/b");
    let o = upgrade_from_url(
        &engine,
        ctx.clone(),
        &url,
        UpgradeOptions::default(),
        &fetch,
        &mut |p| events.push(p),
    )
    .await
    .unwrap();
    assert_eq!(o.slot, Slot::B);
    assert!(o.rebooting);
    assert_eq!(
        &fx.devices.slot(Slot::B).contents()[..fx.img.len()],
        &fx.img[..]
    );
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1] > 0 && starts[1] <= 50_000, "{starts:?}");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("retrying from offset")),
        "{events:?}"
    );
    for phase in [
        Phase::Header,
        Phase::Write,
        Phase::Readback,
        Phase::Activate,
    ] {
        assert!(events.iter().any(|e| e.phase == phase), "{phase:?} missing");
    }
    assert_eq!(ctx.status().trial, Some(Slot::B));

    let e = upgrade_from_url(
        &engine,
        ctx,
        &format!("https://localhost:{port}/missing"),
        UpgradeOptions::default(),
        &fetch,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
    assert!(!engine.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_fetch_copies_chunks_the_booted_slot_already_has() {
    use super::device::SlotDevice;
    use super::fetch::{FetchOptions, upgrade_from_url};
    let fx = Fx::new();
    let b = Arc::new(fx.bundle("qemu-arm64", "1.2.0"));
    let header_len = u64::from(u32::from_le_bytes(b[12..16].try_into().unwrap()));
    // The booted slot A already holds the second half of the new image (chunks 16..).
    let half = 64 << 10;
    let mut a = fx.devices.slot(Slot::A).clone();
    a.write_at(half as u64, &fx.img[half..]).unwrap();
    let (port, starts) = https_server(b.clone(), usize::MAX).await;
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    let url = format!("https://localhost:{port}/b");
    let o = upgrade_from_url(
        &engine,
        ctx.clone(),
        &url,
        UpgradeOptions::default(),
        &FetchOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        &fx.devices.slot(Slot::B).contents()[..fx.img.len()],
        &fx.img[..]
    );
    assert_eq!(o.bytes_written, fx.img.len() as u64);
    // The 64 KiB header probe (header + chunks 0..14 + part of 15), then chunk 15 alone;
    // chunks 16..31 come from slot A.
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts, vec![0, header_len + 15 * 4096]);
    let log = ctx.log.lock().unwrap().join("\n");
    assert!(
        log.contains("16 chunks are copied from the booted slot A"),
        "{log}"
    );
}
