//! A station's side of a session for tests that drive the protocol
//! directly: a link config from the test PKI, files to offer, hashes.

use std::path::Path;
use std::time::Duration;

use ferry_agent::sender::OutgoingFile;
use ferry_common::link::{ClientLink, ClientLinkConfig};
use ferry_common::protocol::Sha256;
use ferry_common::station::StationId;

use crate::pki::{CertFiles, TestPki};

/// A link config for `station` with certificate `files`, dialling `endpoint`.
pub fn link_config(
    pki: &TestPki,
    station: &str,
    files: &CertFiles,
    endpoint: &str,
    heartbeat: Duration,
) -> anyhow::Result<ClientLinkConfig> {
    Ok(ClientLinkConfig {
        station: StationId::new(station)?,
        endpoints: vec![endpoint.to_owned()],
        tls: pki.client_config(files)?,
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat,
        software: "ferry-tests".into(),
    })
}

/// Opens a session as `station` (its certificate issued on first use).
pub async fn connect(pki: &TestPki, station: &str, endpoint: &str) -> anyhow::Result<ClientLink> {
    let files = pki.station(station)?;
    let config = link_config(pki, station, &files, endpoint, Duration::from_secs(1))?;
    Ok(ClientLink::connect(&config, endpoint).await?)
}

/// Writes `content` at `dir/rel` and describes it for offering under `root`.
pub fn outgoing(dir: &Path, root: &str, rel: &str, content: &[u8]) -> anyhow::Result<OutgoingFile> {
    let abs = dir.join(rel);
    if let Some(parent) = abs.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&abs, content)?;
    Ok(OutgoingFile {
        root: root.into(),
        rel_path: rel.into(),
        abs_path: abs,
        size: content.len() as u64,
        mtime_ns: 1_646_675_878_000_000_000,
        sha256: None,
    })
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sha256 {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// Offers `file` alone as `batch` and sends only its first `chunks` chunks
/// of `chunk` bytes, then waits until the collector has written them (a
/// status answer comes after every earlier message was handled): a transfer
/// cut in the middle.
pub async fn send_partial(
    link: &mut ClientLink,
    batch: u64,
    file: &OutgoingFile,
    chunks: usize,
    chunk: usize,
) -> anyhow::Result<()> {
    use ferry_common::protocol::{Chunk, FileOffer, Message, Offer, StatusQuery};
    let offer = FileOffer {
        id: 0,
        root: file.root.clone(),
        path: file.rel_path.clone(),
        size: file.size,
        mtime_ns: file.mtime_ns,
        sha256: None,
    };
    link.send(Message::Offer(Offer {
        batch,
        files: vec![offer],
    }))
    .await?;
    anyhow::ensure!(
        matches!(link.recv().await?, Message::OfferReply(_)),
        "no offer reply"
    );
    let content = std::fs::read(&file.abs_path)?;
    for (i, data) in content.chunks(chunk).take(chunks).enumerate() {
        let offset = (i * chunk) as u64;
        link.send(Message::Chunk(Chunk {
            batch,
            file: 0,
            offset,
            data: bytes::Bytes::copy_from_slice(data),
        }))
        .await?;
    }
    link.send(Message::StatusQuery(StatusQuery {})).await?;
    while !matches!(link.recv().await?, Message::StatusReply(_)) {}
    Ok(())
}
