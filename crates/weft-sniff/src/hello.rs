use crate::reader::Reader;
use crate::{SniffError, MAX_PEEK};

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext fragment MUST NOT exceed 2^14 bytes.
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// The DNS limit on a name's wire length; nothing longer can be resolved
/// or routed, so it is cheaper to refuse it here than to carry it around.
const MAX_HOST_NAME_LEN: usize = 255;

/// The parts of a TLS ClientHello the proxy routes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` from the `server_name` extension, ASCII-lowercased.
    /// `None` when the client sent no `server_name` extension or one
    /// without a `host_name` entry.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order of preference. Names that
    /// are not UTF-8 are left out: no protocol the proxy can select has
    /// one, and they would otherwise have to be mangled to fit a `String`.
    pub alpn: Vec<String>,
    /// The versions from the `supported_versions` extension in the client's
    /// order, GREASE values (RFC 8701) removed; without that extension, just
    /// the `legacy_version` field.
    pub tls_versions: Vec<u16>,
}

/// Parses the ClientHello at the start of `buf`, the raw bytes read from a
/// connection so far.
///
/// The hello may span several handshake records (RFC 8446 §5.1). Bytes after
/// the end of the hello are ignored. Returns [`SniffError::Incomplete`]
/// exactly when some continuation of `buf` would parse within
/// [`MAX_PEEK`] bytes, so the caller reads more on `Incomplete` and gives up
/// on anything else.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, SniffError> {
    parse_with_extent(buf).map(|parsed| parsed.hello)
}

/// A parsed hello plus where it was found, for the fuzzing oracle.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) hello: ClientHello,
    /// The reassembled handshake message, header included.
    pub(crate) message: Vec<u8>,
    /// Length of the shortest prefix of the input that parses.
    pub(crate) end: usize,
}

pub(crate) fn parse_with_extent(buf: &[u8]) -> Result<Parsed, SniffError> {
    // Clipping first makes the cap a property of the input rather than a
    // check that each step below could forget.
    let buf = buf.get(..MAX_PEEK).unwrap_or(buf);
    let (message, end) = match reassemble(buf)? {
        Walk::Complete { message, end } => (message, Some(end)),
        Walk::Partial { received } => (received, None),
    };
    let Some(total) = handshake_total(&message)? else {
        return Err(SniffError::Incomplete);
    };
    let declared = total - HANDSHAKE_HEADER_LEN;
    let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or(&[]);
    // Parsing a partial body is deliberate: a malformed field near the start
    // must be reported as such even while the rest is still in flight.
    let hello = parse_body(&mut Reader::new(body, declared))?;
    match end {
        Some(end) => Ok(Parsed { hello, message, end }),
        // Unreachable in practice since `finish` demands every byte, but a
        // partial message must never be reported as a hello.
        None => Err(SniffError::Incomplete),
    }
}

enum Walk {
    /// The whole handshake message arrived; `end` is the input offset just
    /// past its last byte.
    Complete { message: Vec<u8>, end: usize },
    /// The input ran out first; what arrived so far is valid at the record
    /// layer and could still fit in the cap.
    Partial { received: Vec<u8> },
}

/// Concatenates the handshake fragments of consecutive records until the
/// first handshake message is complete.
fn reassemble(buf: &[u8]) -> Result<Walk, SniffError> {
    let mut message = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or(&[]);
        let header = rest.get(..RECORD_HEADER_LEN).unwrap_or(rest);
        check_record_header(header, pos == 0)?;
        if pos + RECORD_HEADER_LEN > MAX_PEEK {
            return Err(SniffError::TooLarge);
        }
        let &[_, _, _, len_hi, len_lo] = header else {
            return Ok(Walk::Partial { received: message });
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len == 0 {
            return Err(SniffError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT_LEN {
            return Err(SniffError::Malformed("record longer than 2^14 bytes"));
        }
        let start = pos + RECORD_HEADER_LEN;
        let record_end = start + len;
        let fragment = buf.get(start..record_end.min(buf.len())).unwrap_or(&[]);
        let before = message.len();
        message.extend_from_slice(fragment);

        if let Some(total) = handshake_total(&message)? {
            if message.len() >= total {
                message.truncate(total);
                return Ok(Walk::Complete { message, end: start + (total - before) });
            }
            let missing = total - message.len();
            let unread_in_record = len - fragment.len();
            let min_end = if missing <= unread_in_record {
                start + fragment.len() + missing
            } else {
                let after = missing - unread_in_record;
                record_end + after.div_ceil(MAX_FRAGMENT_LEN) * RECORD_HEADER_LEN + after
            };
            if min_end > MAX_PEEK {
                return Err(SniffError::TooLarge);
            }
        }
        if fragment.len() < len {
            return Ok(Walk::Partial { received: message });
        }
        pos = record_end;
    }
}

/// Checks as much of a record header as has arrived.
fn check_record_header(header: &[u8], first: bool) -> Result<(), SniffError> {
    // Only the very first byte decides whether this is TLS at all; after
    // that, anything unexpected is a broken TLS client rather than another
    // protocol.
    let reject = |what| {
        if first {
            SniffError::NotTls
        } else {
            SniffError::Malformed(what)
        }
    };
    if header.first().is_some_and(|&t| t != CONTENT_TYPE_HANDSHAKE) {
        return Err(reject("non-handshake record inside ClientHello"));
    }
    if header.get(1).is_some_and(|&major| major != 0x03) {
        return Err(reject("record version"));
    }
    if header.get(2).is_some_and(|&minor| minor > 0x04) {
        return Err(reject("record version"));
    }
    Ok(())
}

/// Total length (header included) of the handshake message, once its
/// header has arrived.
fn handshake_total(message: &[u8]) -> Result<Option<usize>, SniffError> {
    if message.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
        return Err(SniffError::Malformed("first handshake message is not a ClientHello"));
    }
    let &[_, a, b, c, ..] = message else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([0, a, b, c]);
    let len = usize::try_from(len).map_err(|_| SniffError::TooLarge)?;
    Ok(Some(HANDSHAKE_HEADER_LEN + len))
}

/// RFC 8446 §4.1.2 (the TLS 1.2 layout of RFC 5246 §7.4.1.2 is the same,
/// except that the extensions block may be absent).
fn parse_body(body: &mut Reader<'_>) -> Result<ClientHello, SniffError> {
    let legacy_version = body.u16("legacy_version")?;
    if legacy_version >> 8 != 0x03 {
        return Err(SniffError::Malformed("legacy_version"));
    }
    body.take(RANDOM_LEN, "random")?;
    if body.vec8("legacy_session_id")?.declared_len() > MAX_SESSION_ID_LEN {
        return Err(SniffError::Malformed("legacy_session_id longer than 32 bytes"));
    }
    let suites = body.vec16("cipher_suites")?.declared_len();
    if suites < 2 || suites % 2 != 0 {
        return Err(SniffError::Malformed("cipher_suites"));
    }
    if body.vec8("legacy_compression_methods")?.declared_len() == 0 {
        return Err(SniffError::Malformed("legacy_compression_methods is empty"));
    }

    let mut hello = ClientHello::default();
    let mut supported_versions = None;
    if !body.at_end() {
        let mut extensions = body.vec16("extensions")?;
        let mut seen = ExtensionSet::default();
        while !extensions.at_end() {
            let ext_type = extensions.u16("extension type")?;
            let mut data = extensions.vec16("extension data")?;
            // RFC 8446 §4.2 forbids repeats; accepting them would let the
            // proxy route on one server_name while the backend uses another.
            if !seen.insert(ext_type) {
                return Err(SniffError::Malformed("duplicate extension"));
            }
            match ext_type {
                EXT_SERVER_NAME => hello.server_name = parse_server_name(&mut data)?,
                EXT_ALPN => hello.alpn = parse_alpn(&mut data)?,
                EXT_SUPPORTED_VERSIONS => {
                    supported_versions = Some(parse_supported_versions(&mut data)?);
                }
                _ => {}
            }
        }
        extensions.finish("extensions")?;
    }
    body.finish("trailing bytes after extensions")?;
    hello.tls_versions = supported_versions.unwrap_or_else(|| vec![legacy_version]);
    Ok(hello)
}

/// RFC 6066 §3.
fn parse_server_name(data: &mut Reader<'_>) -> Result<Option<String>, SniffError> {
    let mut list = data.vec16("server_name_list")?;
    if list.declared_len() == 0 {
        return Err(SniffError::Malformed("empty server_name_list"));
    }
    let mut host = None;
    while !list.at_end() {
        let name_type = list.u8("server name type")?;
        // No other name type is defined; assuming they share host_name's
        // length-prefixed layout is what lets entries after one be found.
        let mut name = list.vec16("server name")?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(SniffError::Malformed("more than one host_name"));
        }
        host = Some(parse_host_name(&mut name)?);
    }
    list.finish("server_name_list")?;
    data.finish("server_name extension")?;
    Ok(host)
}

fn parse_host_name(name: &mut Reader<'_>) -> Result<String, SniffError> {
    match name.declared_len() {
        0 => return Err(SniffError::Malformed("empty host_name")),
        n if n > MAX_HOST_NAME_LEN => return Err(SniffError::Malformed("host_name too long")),
        _ => {}
    }
    if !name.received_rest().iter().all(|b| b.is_ascii_graphic()) {
        return Err(SniffError::Malformed("host_name is not printable ASCII"));
    }
    let bytes = name.take_rest("host_name")?;
    let host = std::str::from_utf8(bytes).map_err(|_| SniffError::Malformed("host_name is not printable ASCII"))?;
    Ok(host.to_ascii_lowercase())
}

/// RFC 7301 §3.1.
fn parse_alpn(data: &mut Reader<'_>) -> Result<Vec<String>, SniffError> {
    let mut list = data.vec16("protocol_name_list")?;
    if list.declared_len() < 2 {
        return Err(SniffError::Malformed("protocol_name_list too short"));
    }
    let mut protocols = Vec::new();
    while !list.at_end() {
        let mut name = list.vec8("protocol name")?;
        if name.declared_len() == 0 {
            return Err(SniffError::Malformed("empty protocol name"));
        }
        if let Ok(name) = std::str::from_utf8(name.take_rest("protocol name")?) {
            protocols.push(name.to_owned());
        }
    }
    list.finish("protocol_name_list")?;
    data.finish("application_layer_protocol_negotiation extension")?;
    Ok(protocols)
}

/// RFC 8446 §4.2.1, ClientHello form.
fn parse_supported_versions(data: &mut Reader<'_>) -> Result<Vec<u16>, SniffError> {
    let mut list = data.vec8("supported_versions")?;
    let len = list.declared_len();
    if len < 2 || len % 2 != 0 {
        return Err(SniffError::Malformed("supported_versions"));
    }
    let mut versions = Vec::with_capacity(len / 2);
    while !list.at_end() {
        let version = list.u16("supported_versions")?;
        if !is_grease(version) {
            versions.push(version);
        }
    }
    list.finish("supported_versions")?;
    data.finish("supported_versions extension")?;
    Ok(versions)
}

/// RFC 8701 §2: 0x0A0A, 0x1A1A, ..., 0xFAFA.
fn is_grease(value: u16) -> bool {
    let [hi, lo] = value.to_be_bytes();
    hi == lo && lo & 0x0f == 0x0a
}

/// Which extension types have been seen. A bitmap rather than a list
/// because a 64 KiB hello can hold ~16k extensions, and quadratic duplicate
/// checks on attacker input would be a cheap CPU sink.
struct ExtensionSet([u64; 1024]);

impl Default for ExtensionSet {
    fn default() -> Self {
        Self([0; 1024])
    }
}

impl ExtensionSet {
    /// Returns whether `ext_type` was new.
    fn insert(&mut self, ext_type: u16) -> bool {
        let word = usize::from(ext_type >> 6);
        let bit = 1u64 << (ext_type & 63);
        match self.0.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values() {
        let grease: Vec<u16> = (0..=u16::MAX).filter(|&v| is_grease(v)).collect();
        let expected: Vec<u16> = (0..16u16).map(|i| (i << 12) | 0x0a00 | (i << 4) | 0x0a).collect();
        assert_eq!(grease, expected);
    }

    #[test]
    fn extension_set_covers_every_type() {
        let mut set = ExtensionSet::default();
        assert!((0..=u16::MAX).all(|t| set.insert(t)));
        assert!((0..=u16::MAX).all(|t| !set.insert(t)));
    }
}
