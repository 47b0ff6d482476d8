//! The downloader against an HTTP server this test starts on 127.0.0.1 (no internet).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use bank_data::*;
use sha2::{Digest, Sha256};

use crate::common::pattern;

/// How the test server behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Close the first full response after this many body bytes.
    cut_first_after: Option<usize>,
    /// Ignore `Range` and always send the whole file.
    ignore_range: bool,
}

/// Serves `body` at `/file`; records the `Range` header of every request.
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl Server {
    fn start(body: Vec<u8>, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&ranges);
        std::thread::spawn(move || {
            let mut cut = behaviour.cut_first_after;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut range = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                        range = Some(v.trim().to_string());
                    }
                }
                log.lock().unwrap().push(range.clone());
                if !request.starts_with("GET /file ") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let start = range
                    .filter(|_| !behaviour.ignore_range)
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
                let (status, from) = match start {
                    Some(s) if s >= body.len() => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        continue;
                    }
                    Some(s) => ("206 Partial Content", s),
                    None => ("200 OK", 0),
                };
                let rest = &body[from..];
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                let send = match cut.take() {
                    Some(n) if from == 0 => &rest[..n],
                    _ => rest,
                };
                let _ = stream.write_all(send);
                let _ = stream.flush();
            }
        });
        Self { url, ranges }
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn downloads_verify_and_skip_when_present() {
    let body = pattern(300_000, 1);
    let server = Server::start(body.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("sub/file.bin");
    let d = Downloader::default();
    d.fetch(&server.url, &dest, &sha256_hex(&body)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!part_path(&dest).exists());
    d.fetch(&server.url, &dest, &sha256_hex(&body)).unwrap();
    assert_eq!(
        server.ranges().len(),
        1,
        "a verified file is not fetched again"
    );
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let body = pattern(500_000, 2);
    let server = Server::start(
        body.clone(),
        Behaviour {
            cut_first_after: Some(123_456),
            ..Behaviour::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let d = Downloader::default();
    let e = d.fetch(&server.url, &dest, &sha256_hex(&body)).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
    assert!(e.to_string().contains("resume"), "{e}");
    assert_eq!(std::fs::metadata(part_path(&dest)).unwrap().len(), 123_456);
    d.fetch(&server.url, &dest, &sha256_hex(&body)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.ranges(), [None, Some("bytes=123456-".into())]);
}

#[test]
fn a_server_that_ignores_ranges_restarts_the_file() {
    let body = pattern(200_000, 3);
    let server = Server::start(
        body.clone(),
        Behaviour {
            cut_first_after: Some(50_000),
            ignore_range: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let d = Downloader::default();
    assert!(d.fetch(&server.url, &dest, &sha256_hex(&body)).is_err());
    d.fetch(&server.url, &dest, &sha256_hex(&body)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn wrong_checksum_and_http_errors_are_reported() {
    let body = pattern(10_000, 4);
    let server = Server::start(body, Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let d = Downloader::default();
    let e = d.fetch(&server.url, &dest, &"0".repeat(64)).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(!dest.exists() && !part_path(&dest).exists());
    let missing = server.url.replace("/file", "/missing");
    let e = d
        .fetch(&missing, &dest, &"0".repeat(64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("/missing"), "{e}");
}

#[test]
fn fetch_and_unpack_gives_the_unpacked_folder() {
    // A .tar.gz holding `cifar-10-batches-bin/test_batch.bin` with two CIFAR records.
    let mut records = Vec::new();
    for label in [3u8, 7] {
        records.push(label);
        records.extend(pattern(3072, u64::from(label)));
    }
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(records.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(
            &mut header,
            "cifar-10-batches-bin/test_batch.bin",
            &records[..],
        )
        .unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let server = Server::start(archive.clone(), Behaviour::default());
    let remote = RemoteFile {
        url: Box::leak(server.url.clone().into_boxed_str()),
        file_name: "cifar-10-binary.tar.gz",
        sha256: Box::leak(sha256_hex(&archive).into_boxed_str()),
        unpacks_to: "cifar-10-batches-bin",
    };
    let dir = tempfile::tempdir().unwrap();
    let folder = Downloader::default()
        .fetch_and_unpack(&remote, dir.path())
        .unwrap();
    let files = cifar_split_files(&folder, CifarKind::Cifar10, false);
    let ds = read_cifar(&files, CifarKind::Cifar10, DecodeOptions::default()).unwrap();
    assert_eq!(ds.labels().unwrap(), [3, 7]);
    // Present now: no second request.
    Downloader::default()
        .fetch_and_unpack(&remote, dir.path())
        .unwrap();
    assert_eq!(server.ranges().len(), 1);
}
