//! Peer sessions over TLS WebSocket (binary frames of [`super::wire`]).
//!
//! PLACEHOLDER API: the implementation is being written; the signatures below are the
//! contract the round loop codes against.

use std::net::SocketAddr;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{NodeKey, PeerMsg};

/// Settings of the peer port.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// `host:port` of peers to dial.
    pub known_peers: Vec<String>,
    pub contract_id: String,
    /// `roundtime_ms * 100 + stage_slice`.
    pub time_config: u64,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
}

/// A message from a verified peer (never a handshake message).
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeKey,
    pub msg: PeerMsg,
}

/// A verified session, for `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub key: NodeKey,
    pub addr: SocketAddr,
    /// True when this node dialed the session.
    pub outbound: bool,
}

/// Errors starting the peer port.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("binding the peer port {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Handle to the peer port; cheap to clone.
#[derive(Clone)]
pub struct PeerNet {
    local_addr: SocketAddr,
}

impl PeerNet {
    /// Binds the peer port, starts accepting and dialing; verified peers' messages go to
    /// `inbound`. Every task belongs to `tracker` and stops on `cancel`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: PeerConfig,
        key: SigningKey,
        tls_server: Arc<rustls::ServerConfig>,
        tls_client: Arc<rustls::ClientConfig>,
        inbound: mpsc::Sender<Inbound>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<PeerNet, PeerError> {
        let _ = (key, tls_server, tls_client, inbound, cancel, tracker);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| PeerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| PeerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        Ok(PeerNet { local_addr })
    }

    /// The bound peer address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends to every verified session (encoded once); a full session queue drops it.
    pub fn broadcast(&self, msg: &PeerMsg) {
        let _ = msg;
    }

    /// Sends to one verified peer; false when there is no session with it.
    pub fn send(&self, to: &NodeKey, msg: &PeerMsg) -> bool {
        let _ = (to, msg);
        false
    }

    /// The verified sessions.
    pub fn peers(&self) -> Vec<PeerStatus> {
        Vec::new()
    }

    /// Replaces the peers to dial (config change, `peer_changeset`).
    pub fn set_known_peers(&self, peers: Vec<String>) {
        let _ = peers;
    }

    /// The time config announced in later handshakes (after a config change).
    pub fn set_time_config(&self, time_config: u64) {
        let _ = time_config;
    }
}
