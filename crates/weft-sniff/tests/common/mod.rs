//! Builds ClientHello bytes field by field, so tests can state exactly which
//! field they break.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_PADDING: u16 = 21;
pub const EXT_ALPN: u16 = 16;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;

pub fn vec8(data: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(data.len()).expect("vec8 overflow")];
    out.extend_from_slice(data);
    out
}

pub fn vec16(data: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(data.len()).expect("vec16 overflow").to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

pub fn sni_data(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name_type, name) in entries {
        list.push(*name_type);
        list.extend(vec16(name));
    }
    vec16(&list)
}

pub fn alpn_data(names: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = names.iter().flat_map(|n| vec8(n)).collect();
    vec16(&list)
}

pub fn versions_data(versions: &[u16]) -> Vec<u8> {
    let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
    vec8(&list)
}

#[derive(Clone, Debug)]
pub struct HelloBuilder {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub cipher_suites: Vec<u8>,
    pub compression: Vec<u8>,
    /// `None` leaves the extensions block out entirely (pre-TLS 1.3 style).
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
    /// Used verbatim as the extensions block's content, when set.
    pub raw_extensions: Option<Vec<u8>>,
    /// Appended to the body after the extensions block.
    pub trailer: Vec<u8>,
}

impl Default for HelloBuilder {
    fn default() -> Self {
        Self {
            legacy_version: 0x0303,
            session_id: vec![0xaa; 32],
            cipher_suites: vec![0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f],
            compression: vec![0],
            extensions: Some(Vec::new()),
            raw_extensions: None,
            trailer: Vec::new(),
        }
    }
}

impl HelloBuilder {
    pub fn ext(mut self, ext_type: u16, data: Vec<u8>) -> Self {
        self.extensions.get_or_insert_with(Vec::new).push((ext_type, data));
        self
    }

    pub fn sni(self, host: &str) -> Self {
        self.ext(EXT_SERVER_NAME, sni_data(&[(0, host.as_bytes())]))
    }

    pub fn alpn(self, names: &[&str]) -> Self {
        let names: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        self.ext(EXT_ALPN, alpn_data(&names))
    }

    pub fn versions(self, versions: &[u16]) -> Self {
        self.ext(EXT_SUPPORTED_VERSIONS, versions_data(versions))
    }

    pub fn body(&self) -> Vec<u8> {
        let mut body = self.legacy_version.to_be_bytes().to_vec();
        body.extend((0u8..32).map(|i| i.wrapping_mul(37)));
        body.extend(vec8(&self.session_id));
        body.extend(vec16(&self.cipher_suites));
        body.extend(vec8(&self.compression));
        if let Some(raw) = &self.raw_extensions {
            body.extend(vec16(raw));
        } else if let Some(extensions) = &self.extensions {
            let mut block = Vec::new();
            for (ext_type, data) in extensions {
                block.extend(ext_type.to_be_bytes());
                block.extend(vec16(data));
            }
            body.extend(vec16(&block));
        }
        body.extend(&self.trailer);
        body
    }

    /// The handshake message: type, uint24 length, body.
    pub fn message(&self) -> Vec<u8> {
        let body = self.body();
        let len = u32::try_from(body.len()).expect("body too long").to_be_bytes();
        let mut message = vec![0x01, len[1], len[2], len[3]];
        message.extend(body);
        message
    }

    /// The message framed into records of at most `chunk` bytes.
    pub fn records(&self, chunk: usize) -> Vec<u8> {
        weft_sniff::fuzzing::frame_records(&self.message(), chunk)
    }
}

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn fuzz_corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}
