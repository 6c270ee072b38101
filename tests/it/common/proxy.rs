//! A TCP proxy in front of LocalStack (or PostgreSQL) that a test can cut and restore, to
//! stand for "the service went away" without stopping the one other tests share.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; `endpoint()` is what the process under test uses as SQS.
pub(crate) struct SqsProxy {
    port: u16,
    /// true = cut: new connections are dropped at once and open ones are closed.
    cut: Arc<watch::Sender<bool>>,
}

impl SqsProxy {
    /// Starts forwarding 127.0.0.1:<free port> → `upstream` (host:port).
    pub(crate) async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let state = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if *state.borrow() {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_rx = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    /// The local port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint URL to configure as `sqs.endpoint_url`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SQS "goes away": every connection is refused or closed.
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// SQS "comes back".
    pub(crate) fn restore(&self) {
        self.cut.send_replace(false);
    }
}
