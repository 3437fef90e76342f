//! A loopback TCP proxy that can be switched off, to take a service "down" for one test without
//! stopping the shared service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Forwards 127.0.0.1:<port> to `target` while up; while down, connections are closed at once.
pub struct Proxy {
    pub addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    /// Start forwarding to `target` (host:port), initially up or down.
    pub async fn start(target: &str, up: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let flag = Arc::new(AtomicBool::new(up));
        let cut = Arc::new(Notify::new());
        let (target, f, c) = (target.to_string(), flag.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !f.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, c) = (target.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up: flag,
            cut,
        }
    }

    /// Refuse new connections and cut the open ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Forward again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
