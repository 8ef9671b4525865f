//! A TCP proxy in front of Postgres that a test can cut: `Pass` forwards, `Refuse` closes
//! every connection and refuses new ones (database down), `Hang` keeps connections open but
//! forwards nothing (database unresponsive).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Drop every connection and refuse new ones.
    Refuse = 1,
    /// Hold every byte.
    Hang = 2,
}

/// A running proxy to `target`.
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to.
    pub addr: String,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (e.g. `127.0.0.1:5432`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let target = target.to_owned();
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                if m.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    pipe(inbound, outbound, m).await;
                });
            }
        });
        Proxy { addr, mode, task }
    }

    /// Switches mode.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(a: TcpStream, b: TcpStream, mode: Arc<AtomicU8>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let m1 = mode.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match tokio::time::timeout(Duration::from_millis(100), ar.read(&mut buf)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => 0,
            };
            if !forward(&m1, &mut bw, &buf[..n]).await {
                break;
            }
        }
    };
    let m2 = mode;
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match tokio::time::timeout(Duration::from_millis(100), br.read(&mut buf)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => 0,
            };
            if !forward(&m2, &mut aw, &buf[..n]).await {
                break;
            }
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

/// Writes `data` once the mode allows; false when the connection must close.
async fn forward(mode: &AtomicU8, w: &mut tokio::net::tcp::OwnedWriteHalf, data: &[u8]) -> bool {
    loop {
        match mode.load(Ordering::SeqCst) {
            m if m == Mode::Refuse as u8 => return false,
            m if m == Mode::Hang as u8 => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => break,
        }
    }
    data.is_empty() || w.write_all(data).await.is_ok()
}
