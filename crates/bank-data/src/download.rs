//! Downloading the public datasets, for users with internet: SHA-256 checked, resumable.
//!
//! A download goes to `<file>.part`. If that exists, the next attempt asks the server for the
//! rest (`Range: bytes=N-`) and appends; a server that answers with the whole file instead starts
//! it over. Only a file whose SHA-256 matches the published one is renamed into place; a mismatch
//! deletes the partial file and says so.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A file published at a fixed address with a known checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    /// The address.
    pub url: &'static str,
    /// The file name to store it under.
    pub file_name: &'static str,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: &'static str,
    /// The folder the archive unpacks to.
    pub unpacks_to: &'static str,
}

/// CIFAR-10, binary version (170,052,171 bytes; unpacks to `cifar-10-batches-bin/`).
pub const CIFAR10_BINARY: RemoteFile = RemoteFile {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    file_name: "cifar-10-binary.tar.gz",
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    unpacks_to: "cifar-10-batches-bin",
};

/// CIFAR-100, binary version (168,513,733 bytes; unpacks to `cifar-100-binary/`).
pub const CIFAR100_BINARY: RemoteFile = RemoteFile {
    url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    file_name: "cifar-100-binary.tar.gz",
    sha256: "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    unpacks_to: "cifar-100-binary",
};

/// STL-10, binary version (2,640,397,119 bytes; unpacks to `stl10_binary/`).
pub const STL10_BINARY: RemoteFile = RemoteFile {
    url: "https://cs.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    file_name: "stl10_binary.tar.gz",
    sha256: "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866",
    unpacks_to: "stl10_binary",
};

/// Downloads files over HTTP(S) with resume and checksum verification.
#[derive(Debug, Clone)]
pub struct Downloader {
    agent: ureq::Agent,
}

impl Default for Downloader {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl Downloader {
    /// A downloader whose connections give up after `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .build(),
        }
    }

    /// Downloads `url` to `dest` unless `dest` already has the checksum `sha256`.
    /// Resumes from `<dest>.part` when a previous attempt was cut off.
    pub fn fetch(&self, url: &str, dest: &Path, sha256: &str) -> Result<PathBuf> {
        if dest.is_file() && sha256_of(dest)? == sha256 {
            return Ok(dest.to_path_buf());
        }
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let part = part_path(dest);
        let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut request = self.agent.get(url);
        if have > 0 {
            request = request.set("Range", &format!("bytes={have}-"));
        }
        let failed = |reason: String| Error::Download {
            url: url.to_string(),
            reason,
        };
        let response = match request.call() {
            Ok(r) => Some(r),
            // The partial file already holds everything.
            Err(ureq::Error::Status(416, _)) if have > 0 => None,
            Err(ureq::Error::Status(code, r)) => {
                return Err(failed(format!("HTTP {code} {}", r.status_text())));
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        if let Some(response) = response {
            let resume = response.status() == 206;
            if have > 0 && resume {
                tracing::info!(url, bytes = have, "resuming download");
            }
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .append(resume)
                .truncate(!resume)
                .open(&part)
                .map_err(|e| Error::io(&part, e))?;
            let mut body = response.into_reader();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = out.flush();
                        return Err(failed(format!(
                            "connection lost ({e}); run again to resume from {}",
                            part.display()
                        )));
                    }
                };
                out.write_all(&buf[..n]).map_err(|e| Error::io(&part, e))?;
            }
            out.sync_all().map_err(|e| Error::io(&part, e))?;
        }
        let actual = sha256_of(&part)?;
        if actual != sha256 {
            let _ = fs::remove_file(&part);
            return Err(Error::Checksum {
                path: dest.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
        fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
        Ok(dest.to_path_buf())
    }

    /// Makes sure `remote` is downloaded into `root` and unpacked there; returns the unpacked
    /// folder. The archive is unpacked into a temporary folder that is renamed when complete, so
    /// an interrupted unpack is redone, never half-used.
    pub fn fetch_and_unpack(&self, remote: &RemoteFile, root: &Path) -> Result<PathBuf> {
        let target = root.join(remote.unpacks_to);
        if target.is_dir() {
            return Ok(target);
        }
        tracing::info!(url = remote.url, dest = %root.display(), "downloading dataset");
        let archive = self.fetch(remote.url, &root.join(remote.file_name), remote.sha256)?;
        unpack(&archive, root, remote.unpacks_to)
    }
}

/// Unpacks the `.tar.gz` `archive` into `root`, expecting it to hold the folder `folder`.
pub fn unpack(archive: &Path, root: &Path, folder: &str) -> Result<PathBuf> {
    let staging = root.join(format!(".{folder}.unpacking"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let stream = crate::archive::open_maybe_gz(archive)?;
    tar::Archive::new(stream)
        .unpack(&staging)
        .map_err(|e| Error::format(archive, format!("cannot unpack: {e}")))?;
    let inner = staging.join(folder);
    if !inner.is_dir() {
        return Err(Error::format(
            archive,
            format!("the archive does not contain the folder `{folder}`"),
        ));
    }
    let target = root.join(folder);
    fs::rename(&inner, &target).map_err(|e| Error::io(&target, e))?;
    let _ = fs::remove_dir_all(&staging);
    Ok(target)
}

/// `<dest>.part`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
