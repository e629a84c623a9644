//! A small blocking JSON-RPC client over the Unix socket, for `unblend rpc` and tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

use super::framing::FrameScanner;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is unblend serve running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("RPC I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the appliance closed the connection before answering")]
    Closed,
    #[error("the appliance sent an invalid response: {0}")]
    BadResponse(String),
    #[error("JSON-RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
}

pub struct RpcClient {
    stream: UnixStream,
    next_id: u64,
    input: Vec<u8>,
}

impl RpcClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<RpcClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RpcClient {
            stream,
            next_id: 1,
            input: Vec::new(),
        })
    }

    /// Sends raw bytes (tests use this for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one JSON value from the stream.
    pub fn recv_value(&mut self) -> Result<Value, ClientError> {
        let mut scanner = FrameScanner::default();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some((s, e)) = scanner
                .scan(&self.input)
                .map_err(|e| ClientError::BadResponse(format!("{e:?}")))?
            {
                let v = serde_json::from_slice(&self.input[s..e])
                    .map_err(|e| ClientError::BadResponse(e.to_string()))?;
                self.input.drain(..e);
                return Ok(v);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// Calls `method` and returns its result, or the JSON-RPC error.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_raw(&serde_json::to_vec(&req).expect("a request serialises"))?;
        let resp = self.recv_value()?;
        if resp.get("id") != Some(&json!(id)) {
            return Err(ClientError::BadResponse(format!(
                "unexpected response {resp}"
            )));
        }
        if let Some(err) = resp.get("error") {
            return Err(ClientError::Rpc {
                code: err["code"].as_i64().unwrap_or(0),
                message: err["message"].as_str().unwrap_or("").to_string(),
            });
        }
        resp.get("result")
            .cloned()
            .ok_or_else(|| ClientError::BadResponse(format!("no result in {resp}")))
    }
}
