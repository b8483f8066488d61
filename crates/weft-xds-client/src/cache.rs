//! The persisted xDS config (`weft proxy --xds-cache DIR`): every resource of the last applied
//! config, with its name and version, in one file written atomically after each apply, and
//! read at start so the proxy serves that config while the control plane cannot be reached.
//!
//! File `DIR/xds-cache.bin`:
//!
//! ```text
//! "WEFTXDS1"                                   magic and format version
//! u32 LE length + JSON header                  {"node_id": "...", "written_unix_ms": N}
//! repeated: u32 LE length + resource           envoy.service.discovery.v3.Resource (name, version, Any)
//! u64 LE                                       FNV-1a 64 of every byte before it
//! ```
//!
//! A file that is truncated, fails its checksum, was written for another node id, or is larger
//! than [`MAX_BYTES`] is refused as a whole; resources in an accepted file still go through the
//! same conversion and checks as resources from the server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::Resource as PbResource;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::store::Kind;

/// The cache file's name inside the directory.
pub const FILE_NAME: &str = "xds-cache.bin";
/// Largest cache file read or written (the largest response the client accepts).
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"WEFTXDS1";
/// Largest header (it holds a node id and a time).
const MAX_HEADER: usize = 64 * 1024;

/// One cached resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("{path}: cannot read: {message}")]
    Io { path: String, message: String },
    #[error("{path}: larger than {MAX_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: not a weft xDS cache (corrupt or of another format): {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: written for node {found:?}, this proxy is {expected:?}")]
    Foreign { path: String, found: String, expected: String },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    node_id: String,
    written_unix_ms: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The cache file of `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Encodes `resources` for `node_id`.
pub fn encode(node_id: &str, resources: &[(Kind, String, String, Arc<Any>)]) -> Vec<u8> {
    let written_unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let header = serde_json::to_vec(&Header { node_id: node_id.to_string(), written_unix_ms }).unwrap_or_default();
    let mut out = Vec::with_capacity(64 + resources.iter().map(|r| r.3.value.len() + 128).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, name, version, body) in resources {
        let r = PbResource {
            name: name.clone(),
            version: version.clone(),
            resource: Some((**body).clone()),
            ..Default::default()
        };
        let bytes = r.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes a cache file's bytes; `path` names it in errors. Resources of a type the proxy does
/// not consume are refused with the file.
pub fn decode(bytes: &[u8], node_id: &str, path: &str) -> Result<Vec<Cached>, CacheError> {
    let corrupt = |reason: &str| CacheError::Corrupt { path: path.to_string(), reason: reason.to_string() };
    if bytes.len() > MAX_BYTES {
        return Err(CacheError::TooLarge { path: path.to_string() });
    }
    if bytes.len() < MAGIC.len() + 4 + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("no WEFTXDS1 header"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().map_err(|_| corrupt("truncated"))?);
    if fnv1a(body) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut next = |what: &str, max: usize| -> Result<&[u8], CacheError> {
        if rest.len() < 4 {
            return Err(corrupt(&format!("truncated {what}")));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max || rest.len() - 4 < len {
            return Err(corrupt(&format!("{what} length {len} out of bounds")));
        }
        let (item, tail) = rest[4..].split_at(len);
        rest = tail;
        Ok(item)
    };
    let header: Header = serde_json::from_slice(next("header", MAX_HEADER)?).map_err(|_| corrupt("bad header"))?;
    if header.node_id != node_id {
        return Err(CacheError::Foreign {
            path: path.to_string(),
            found: header.node_id,
            expected: node_id.to_string(),
        });
    }
    let mut out = Vec::new();
    loop {
        let item = match next("resource", MAX_BYTES) {
            Ok(i) => i,
            Err(e) => {
                if rest.is_empty() {
                    break;
                }
                return Err(e);
            }
        };
        let r = PbResource::decode(item).map_err(|e| corrupt(&format!("resource {}: {e}", out.len())))?;
        let body = r.resource.ok_or_else(|| corrupt(&format!("resource {:?} has no body", r.name)))?;
        let kind = Kind::from_url(&body.type_url)
            .ok_or_else(|| corrupt(&format!("resource {:?} of unknown type {:?}", r.name, body.type_url)))?;
        if r.name.is_empty() {
            return Err(corrupt("a resource without a name"));
        }
        out.push(Cached { kind, name: r.name, version: r.version, body });
    }
    Ok(out)
}

/// Reads the cache of `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path, node_id: &str) -> Result<Option<Vec<Cached>>, CacheError> {
    let path = path_in(dir);
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Io { path: shown, message: e.to_string() }),
    };
    if meta.len() > MAX_BYTES as u64 {
        return Err(CacheError::TooLarge { path: shown });
    }
    let bytes = std::fs::read(&path).map_err(|e| CacheError::Io { path: shown.clone(), message: e.to_string() })?;
    decode(&bytes, node_id, &shown).map(Some)
}

/// Writes `bytes` as the cache of `dir` atomically: a sibling temporary file, flushed to disk,
/// renamed over the cache, and the directory synced, so a crash leaves the old file or the new
/// one. Creates `dir` (mode 0700) when missing.
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.len() > MAX_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {MAX_BYTES} bytes")));
    }
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let path = path_in(dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: Kind, name: &str, version: &str, payload: &[u8]) -> (Kind, String, String, Arc<Any>) {
        let body = Any { type_url: kind.url().to_string(), value: payload.to_vec() };
        (kind, name.to_string(), version.to_string(), Arc::new(body))
    }

    #[test]
    fn a_cache_reads_back_what_was_written() {
        let resources = vec![
            res(Kind::Cluster, "outbound|80||a", "v1", b"\x0a\x01a"),
            res(Kind::Listener, "127.0.0.1_15080", "v2", b""),
            res(Kind::Route, "http_proxy", "v3", b"\x0a\x0ahttp_proxy"),
        ];
        let bytes = encode("sidecar~1.2.3.4~a.ns~ns.svc.cluster.local", &resources);
        let back = decode(&bytes, "sidecar~1.2.3.4~a.ns~ns.svc.cluster.local", "f").unwrap();
        let want: Vec<Cached> = resources
            .iter()
            .map(|(k, n, v, b)| Cached { kind: *k, name: n.clone(), version: v.clone(), body: (**b).clone() })
            .collect();
        assert_eq!(back, want);
        assert_eq!(decode(&encode("n", &[]), "n", "f").unwrap(), vec![]);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused_whole() {
        let good = encode("me", &[res(Kind::Cluster, "c", "1", b"\x0a\x01c"), res(Kind::Route, "r", "2", b"")]);
        let corrupt = |b: &[u8]| matches!(decode(b, "me", "f"), Err(CacheError::Corrupt { .. }));
        assert!(matches!(decode(&good, "other", "f"), Err(CacheError::Foreign { .. })));
        assert!(corrupt(b""));
        assert!(corrupt(b"WEFTXDS1"));
        assert!(corrupt(b"WEFTXDS2\0\0\0\0\0\0\0\0\0\0\0\0"));
        // Every truncation and every single flipped byte is caught.
        for cut in 0..good.len() {
            assert!(corrupt(&good[..cut]), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, "me", "f").is_err(), "flip at {i}");
        }
        // A well-formed file with a resource of a type the proxy does not take.
        let mut odd = MAGIC.to_vec();
        let header = serde_json::to_vec(&Header { node_id: "me".into(), written_unix_ms: 1 }).unwrap();
        odd.extend_from_slice(&(header.len() as u32).to_le_bytes());
        odd.extend_from_slice(&header);
        let item = PbResource {
            name: "x".into(),
            resource: Some(Any { type_url: "type.googleapis.com/unknown.Type".into(), value: vec![] }),
            ..Default::default()
        }
        .encode_to_vec();
        odd.extend_from_slice(&(item.len() as u32).to_le_bytes());
        odd.extend_from_slice(&item);
        let sum = fnv1a(&odd);
        odd.extend_from_slice(&sum.to_le_bytes());
        assert!(corrupt(&odd));
    }

    #[test]
    fn files_are_replaced_atomically_and_missing_ones_are_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state/xds");
        assert_eq!(read(&sub, "me"), Ok(None));
        write(&sub, &encode("me", &[res(Kind::Route, "r", "1", b"")])).unwrap();
        write(&sub, &encode("me", &[res(Kind::Route, "r", "2", b"")])).unwrap();
        let back = read(&sub, "me").unwrap().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].version, "2");
        assert!(!sub.join(format!("{FILE_NAME}.tmp")).exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
