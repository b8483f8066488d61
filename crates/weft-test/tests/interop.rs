//! The backends against independent implementations, and the tools that
//! scripts/test.sh installs.

use std::process::Command;

use weft_test::tools::{envoy_bin, venv_python};
use weft_test::GrpcBackend;

/// grpcio (C core) as the client of the hand-written tonic service. The
/// messages are encoded by hand: both are one or two short string fields.
const PY_CLIENT: &str = r#"
import sys, grpc

def enc(s):
    b = s.encode()
    return b"\x0a" + bytes([len(b)]) + b

def dec(b):
    out, i = {}, 0
    while i < len(b):
        tag, n = b[i], b[i + 1]
        out[tag >> 3] = b[i + 2 : i + 2 + n].decode()
        i += 2 + n
    return out

channel = grpc.insecure_channel(sys.argv[1])
say = channel.unary_unary(
    "/weft.test.Echo/Say", request_serializer=enc, response_deserializer=dec
)
reply = say("from-python", timeout=10)
print(reply[1], reply[2])
try:
    say("x", timeout=10, metadata=(("x-grpc-status", "14"),))
    print("no-error")
except grpc.RpcError as e:
    print(e.code().name)
"#;

#[tokio::test]
async fn grpcio_client_talks_to_grpc_backend() {
    let python = venv_python();
    let backend = GrpcBackend::start("py-target").await;
    let out = Command::new(python).arg("-c").arg(PY_CLIENT).arg(backend.addr().to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python grpc client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "from-python py-target\nUNAVAILABLE\n");
    assert_eq!(backend.hits(), 2);
}

#[test]
fn envoy_binary_runs() {
    let out = Command::new(envoy_bin()).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("version:"));
}
