//! JSON-RPC 2.0 messages and errors, with SPDK's codes and messages.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::methods::RpcResult;
use crate::bdev::BdevError;
use crate::config::CallError;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
/// Not valid in the current state (SPDK_JSONRPC_ERROR_INVALID_STATE).
pub const INVALID_STATE: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn parse_error() -> RpcError {
        RpcError::new(PARSE_ERROR, "Parse error")
    }

    pub fn invalid_request() -> RpcError {
        RpcError::new(INVALID_REQUEST, "Invalid request")
    }

    pub fn method_not_found() -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, "Method not found")
    }

    pub fn invalid_params(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(INVALID_PARAMS, format!("Invalid parameters: {detail}"))
    }

    pub fn internal(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(INTERNAL_ERROR, format!("Internal error: {detail}"))
    }
}

impl From<BdevError> for RpcError {
    /// Bdev failures carry a negative errno as their code, as SPDK's handlers return them.
    fn from(e: BdevError) -> RpcError {
        let errno = match &e {
            BdevError::Exists(_) => libc::EEXIST,
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::MissingFile(_) => libc::ENOENT,
            BdevError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            BdevError::Unsupported(_) => libc::EOPNOTSUPP,
            BdevError::Channel(_) => libc::EIO,
            BdevError::Claimed { .. } => libc::EBUSY,
            BdevError::SameFile { .. } => libc::EEXIST,
            BdevError::BadBlockSize(_)
            | BdevError::SizeNotMultiple { .. }
            | BdevError::ZeroSize
            | BdevError::BadName(_) => libc::EINVAL,
        };
        RpcError::new(-errno, e.to_string())
    }
}

impl From<CallError> for RpcError {
    fn from(e: CallError) -> RpcError {
        match e {
            CallError::InvalidParams(m) => RpcError::invalid_params(m),
            CallError::Bdev(b) => b.into(),
            CallError::UnknownMethod(_) => RpcError::method_not_found(),
        }
    }
}

/// Decodes a method's params; the error names the offending param. Absent params are `{}`.
pub fn params<T: DeserializeOwned>(params: Option<&Value>) -> Result<T, RpcError> {
    let empty = Value::Object(Default::default());
    let p = match params {
        None | Some(Value::Null) => &empty,
        Some(p) => p,
    };
    if !p.is_object() {
        return Err(RpcError::invalid_params("params must be an object"));
    }
    crate::config::decode_params(p).map_err(RpcError::invalid_params)
}

/// One response, serialised with its keys in the order SPDK writes them.
#[derive(Serialize)]
pub struct Response<'a> {
    pub jsonrpc: &'static str,
    pub id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a RpcResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RpcError>,
}

/// Writes one response; the envelope's keys come in SPDK's order (jsonrpc, id, result|error).
pub fn write_response(out: &mut Vec<u8>, id: &Value, outcome: &Result<RpcResult, RpcError>) {
    let r = match outcome {
        Ok(v) => Response {
            jsonrpc: "2.0",
            id,
            result: Some(v),
            error: None,
        },
        Err(e) => Response {
            jsonrpc: "2.0",
            id,
            result: None,
            error: Some(e),
        },
    };
    serde_json::to_writer(out, &r).expect("a response always serialises into memory");
}

/// A response as a `Value` (tests and callers that need one).
pub fn response(id: &Value, outcome: &Result<RpcResult, RpcError>) -> Value {
    let mut out = Vec::new();
    write_response(&mut out, id, outcome);
    serde_json::from_slice(&out).expect("we just wrote valid JSON")
}

/// A request's parts, once its envelope has been checked.
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

/// Checks a request object's envelope. On error, also returns the id to answer with.
pub fn parse_request(v: Value) -> Result<Request, (Value, RpcError)> {
    let Value::Object(mut obj) = v else {
        return Err((Value::Null, RpcError::invalid_request()));
    };
    let id = obj.remove("id");
    let id_ok = matches!(
        id,
        None | Some(Value::Null) | Some(Value::Number(_)) | Some(Value::String(_))
    );
    let reply_id = if id_ok {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if !id_ok || obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err((reply_id, RpcError::invalid_request()));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err((reply_id, RpcError::invalid_request())),
    };
    let params = obj.remove("params");
    if matches!(params, Some(ref p) if !p.is_object() && !p.is_null()) {
        return Err((
            reply_id,
            RpcError::invalid_params("params must be an object"),
        ));
    }
    Ok(Request { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_have_spdk_key_order() {
        let mut out = Vec::new();
        write_response(&mut out, &json!(1), &Ok(RpcResult::Json(json!(true))));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"result":true}"#
        );
        let e = response(&json!("a"), &Err(RpcError::method_not_found()));
        assert_eq!(e["error"]["code"], -32601);
        assert_eq!(e["error"]["message"], "Method not found");
    }

    #[test]
    fn envelopes_are_checked() {
        assert!(parse_request(json!({"jsonrpc":"2.0","method":"m","id":1})).is_ok());
        let (id, e) = parse_request(json!({"jsonrpc":"1.0","method":"m","id":7}))
            .err()
            .unwrap();
        assert_eq!((id, e.code), (json!(7), INVALID_REQUEST));
        let (_, e) = parse_request(json!({"jsonrpc":"2.0","method":5,"id":1}))
            .err()
            .unwrap();
        assert_eq!(e.code, INVALID_REQUEST);
        let (id, e) = parse_request(json!({"jsonrpc":"2.0","method":"m","id":[1]}))
            .err()
            .unwrap();
        assert_eq!((id, e.code), (Value::Null, INVALID_REQUEST));
        let (_, e) = parse_request(json!({"jsonrpc":"2.0","method":"m","id":1,"params":[1]}))
            .err()
            .unwrap();
        assert_eq!(e.code, INVALID_PARAMS);
    }
}
