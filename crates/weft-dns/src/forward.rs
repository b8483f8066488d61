//! Forwarding to the host's upstream resolvers: UDP from a fresh socket (a random port and id
//! per question, answers only from the server asked and only for the question asked), TCP when
//! the answer is truncated, the next server when one times out or refuses, every wait bounded.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout_at, Instant};

use crate::wire::{self, Query};
use crate::DnsError;

/// The upstream resolvers and how long each may take.
#[derive(Clone, Debug)]
pub struct Forwarder {
    pub servers: Vec<SocketAddr>,
    /// Per server and attempt (UDP, then TCP when truncated).
    pub timeout: Duration,
}

impl Forwarder {
    /// Asks the servers in order until one answers.
    pub async fn exchange(&self, q: &Query) -> Result<Message, DnsError> {
        let mut last = DnsError::NoUpstream;
        for server in &self.servers {
            let id: u16 = rand::random();
            let packet = wire::upstream_query(q, id);
            match self.udp(*server, &packet, id, q).await {
                Ok(m) if m.metadata.truncation => match self.tcp(*server, &packet, id, q).await {
                    Ok(m) => return Ok(m),
                    Err(e) => last = e,
                },
                Ok(m) => return Ok(m),
                Err(e) => last = e,
            }
            tracing::debug!(upstream = %server, error = %last, "upstream did not answer; trying the next");
        }
        Err(last)
    }

    async fn udp(&self, server: SocketAddr, packet: &[u8], id: u16, q: &Query) -> Result<Message, DnsError> {
        let fail = |reason: String| DnsError::Upstream { server, reason };
        let deadline = Instant::now() + self.timeout;
        let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let sock = UdpSocket::bind(bind).await.map_err(|e| fail(format!("udp socket: {e}")))?;
        sock.connect(server).await.map_err(|e| fail(format!("udp connect: {e}")))?;
        timeout_at(deadline, sock.send(packet))
            .await
            .map_err(|_| fail("udp send timed out".into()))?
            .map_err(|e| fail(format!("udp send: {e}")))?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
                .map_err(|e| fail(format!("udp: {e}")))?;
            // Anything that is not the answer to this question is ignored (late or forged).
            if let Ok(m) = wire::decode(&buf[..n]) {
                if wire::answers(&m, id, q) {
                    return Ok(m);
                }
            }
        }
    }

    async fn tcp(&self, server: SocketAddr, packet: &[u8], id: u16, q: &Query) -> Result<Message, DnsError> {
        let fail = |reason: String| DnsError::Upstream { server, reason };
        let deadline = Instant::now() + self.timeout;
        let io = async {
            let mut s = TcpStream::connect(server).await.map_err(|e| fail(format!("tcp connect: {e}")))?;
            let _ = s.set_nodelay(true);
            let len = u16::try_from(packet.len()).map_err(|_| fail("query too large".into()))?;
            let mut framed = Vec::with_capacity(packet.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(packet);
            s.write_all(&framed).await.map_err(|e| fail(format!("tcp write: {e}")))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(|e| fail(format!("tcp read: {e}")))?;
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut body).await.map_err(|e| fail(format!("tcp read: {e}")))?;
            let m = wire::decode(&body).map_err(|e| fail(format!("tcp answer unreadable: {e}")))?;
            if !wire::answers(&m, id, q) {
                return Err(fail("tcp answer does not match the question".into()));
            }
            Ok(m)
        };
        timeout_at(deadline, io).await.map_err(|_| fail(format!("no tcp answer within {:?}", self.timeout)))?
    }
}
