//! What a slow, silent or greedy client can hold: headers and bodies that do not arrive
//! in time are cut off, connections over `max_connections` are closed on arrival (and
//! the vault serves again as soon as one is free), and only TLS 1.2 and 1.3 are spoken.
//! Each test waits for the condition it expects, with a generous bound; none races a
//! clock against the machine's load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::helpers::*;

/// Longest a test waits for what it expects.
const PATIENCE: Duration = Duration::from_secs(60);

/// A TLS client trusting the vault's CA, offering `versions`.
fn tls_connector(
    t: &TestApp,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(t.dir.path().join("tls/ca.pem"))
        .expect("CA file")
    {
        roots.add(cert.expect("CA parses")).expect("CA added");
    }
    let config = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn port(t: &TestApp) -> u16 {
    t.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TLS connection to the vault, handshake done.
async fn connect(t: &TestApp) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port(t))).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector(t, rustls::DEFAULT_VERSIONS)
        .connect(name, tcp)
        .await
}

/// Reads until the server closes the connection (or resets it), and returns what came.
async fn read_to_close(conn: &mut TlsStream<TcpStream>) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|_| panic!("the server kept a stalled connection open for {PATIENCE:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

/// One request on an open connection; returns the status line.
async fn healthz(conn: &mut TlsStream<TcpStream>) -> String {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request sent");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn short_timeouts(s: &mut piivault::ServeOptions) {
    s.header_timeout = Duration::from_secs(2);
    s.body_timeout = Duration::from_secs(2);
    s.idle_timeout = Duration::from_secs(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_a_trickled_body_and_a_silent_client_are_cut_off() {
    let t = spawn_app_with(
        Db::Sqlite,
        Options {
            serve: Some(short_timeouts),
            ..Options::default()
        },
    )
    .await;

    // Headers that never end (slowloris): the connection is closed.
    let mut slow = connect(&t).await.expect("connects");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let answer = read_to_close(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(start.elapsed() < PATIENCE);

    // A body that stops short: 408 request_timeout, and the connection closes.
    let mut trickle = connect(&t).await.expect("connects");
    trickle
        .write_all(
            b"POST /v1/subjects HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"fields\":",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");

    // A client that goes silent after a request: closed (its next request's headers do
    // not come), not kept for ever.
    let mut silent = connect(&t).await.expect("connects");
    assert_eq!(healthz(&mut silent).await, "HTTP/1.1 200 OK");
    read_to_close(&mut silent).await;

    // The vault itself serves on.
    let (s, _) = t
        .call(reqwest::Method::GET, "/healthz", None, None, None)
        .await;
    assert_eq!(s, reqwest::StatusCode::OK);
}

fn three_connections(s: &mut piivault::ServeOptions) {
    s.max_connections = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_service_resumes_when_one_ends() {
    let t = spawn_app_with(
        Db::Sqlite,
        Options {
            serve: Some(three_connections),
            ..Options::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&t).await.expect("connects");
        assert_eq!(healthz(&mut c).await, "HTTP/1.1 200 OK");
        held.push(c);
    }
    // A fourth is closed before TLS: its handshake fails.
    let fourth = tokio::time::timeout(PATIENCE, connect(&t))
        .await
        .expect("refused promptly");
    assert!(fourth.is_err(), "a fourth connection was served");

    // One ends; a new connection is served once the vault has seen it go.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    let mut again = loop {
        if let Ok(mut c) = connect(&t).await {
            if healthz(&mut c).await == "HTTP/1.1 200 OK" {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one was freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The refusal was counted.
    again
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let metrics = read_to_close(&mut again).await;
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("piivault_connections_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("refusals counted");
    assert!(refused >= 1.0, "{refused}");
}

/// TLS 1.2 and 1.3 are spoken; 1.0 and 1.1 are refused (checked with OpenSSL's client,
/// which still offers them, where it is installed; rustls cannot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let t = spawn_app(Db::Sqlite).await;
    let connect_with = |versions: &'static [&'static rustls::SupportedProtocolVersion]| {
        let t = &t;
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port(t))).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = tls_connector(t, versions)
                .connect(name, tcp)
                .await
                .expect("handshake");
            conn.get_ref().1.protocol_version()
        }
    };
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    assert_eq!(
        connect_with(&TLS13).await,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        connect_with(&TLS12).await,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // `openssl s_client` offers the old versions; it is on every machine this runs on
    // (Debian's `openssl` package), and the test says so plainly if it is not.
    for flag in ["-tls1", "-tls1_1"] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", port(&t)),
                flag,
                "-cipher",
                "ALL:@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client runs (apt-get install openssl)");
        assert!(!out.status.success(), "{flag} was accepted");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("alert")
                || text.contains("no protocols available")
                || text.contains("wrong version"),
            "{flag}: {text}"
        );
    }
}
