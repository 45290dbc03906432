//! Raw peers for hostile-input tests: a DEALER with any identity through a
//! real tunnel, sending whatever bytes a test wants.

use std::time::Duration;

use ferry_common::bridge::{self, Tunnel};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::pki::{CertFiles, TestPki};

/// A DEALER connected through a real TLS tunnel with `files` as its
/// certificate, announcing `identity`.
pub struct RawDealer {
    pub dealer: zeromq::DealerSocket,
    pub tunnel: Tunnel,
}

impl std::fmt::Debug for RawDealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDealer")
            .field("tunnel", &self.tunnel)
            .finish()
    }
}

impl RawDealer {
    /// Connects; the error is the text the caller would see.
    pub async fn connect(
        pki: &TestPki,
        files: &CertFiles,
        endpoint: &str,
        identity: Vec<u8>,
    ) -> Result<Self, String> {
        let tls = bridge::dial(
            endpoint,
            pki.client_config(files).map_err(|e| e.to_string())?,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        let tunnel = bridge::open_tunnel(tls, &pki.scratch("raw-run"), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut options = zeromq::SocketOptions::default();
        options
            .peer_identity(
                identity
                    .try_into()
                    .map_err(|e: zeromq::ZmqError| e.to_string())?,
            )
            .connect_timeout(Duration::from_secs(3));
        let mut dealer = zeromq::DealerSocket::with_options(options);
        dealer
            .connect(&tunnel.endpoint)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { dealer, tunnel })
    }

    /// Sends one frame of raw bytes.
    pub async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.dealer.send(ZmqMessage::from(bytes)).await?;
        Ok(())
    }

    /// The next message's first frame, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let message = tokio::time::timeout(timeout, self.dealer.recv()).await??;
        Ok(message.get(0).map(|b| b.to_vec()).unwrap_or_default())
    }

    /// Whether the tunnel has closed within `timeout`, and why.
    pub async fn closed_within(&mut self, timeout: Duration) -> Option<String> {
        let mut closed = self.tunnel.closed.clone();
        let _ = tokio::time::timeout(timeout, closed.wait_for(Option::is_some)).await;
        closed.borrow().clone()
    }
}
