mod common;

use common::*;
use weft_sniff::{detect, parse_client_hello, ClientHello, Detected, SniffError, MAX_PEEK};

fn hello(server_name: Option<&str>, alpn: &[&str], tls_versions: &[u16]) -> ClientHello {
    ClientHello {
        server_name: server_name.map(str::to_owned),
        alpn: alpn.iter().map(|s| (*s).to_owned()).collect(),
        tls_versions: tls_versions.to_vec(),
    }
}

fn read_data(name: &str) -> Vec<u8> {
    let path = data_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Hellos captured from `openssl s_client` (OpenSSL 3.0) by a plain TCP
/// listener on loopback, byte for byte as they arrived.
fn captures() -> Vec<(&'static str, ClientHello)> {
    vec![
        (
            "openssl-3.0-tls13-x.example.com-h2-http11.bin",
            hello(Some("x.example.com"), &["h2", "http/1.1"], &[0x0304, 0x0303, 0x0302, 0x0301]),
        ),
        ("openssl-3.0-tls12-x.example.com-h2-http11.bin", hello(Some("x.example.com"), &["h2", "http/1.1"], &[0x0303])),
        (
            "openssl-3.0-tls13-WWW.Example.COM-http11.bin",
            hello(Some("www.example.com"), &["http/1.1"], &[0x0304, 0x0303, 0x0302, 0x0301]),
        ),
    ]
}

#[test]
fn real_openssl_hellos() {
    for (file, expected) in captures() {
        let bytes = read_data(file);
        assert_eq!(detect(&bytes), Detected::Tls, "{file}");
        assert_eq!(parse_client_hello(&bytes), Ok(expected), "{file}");
    }
}

/// The captured hellos' handshake messages, for re-framing.
fn capture_messages() -> Vec<(Vec<u8>, ClientHello)> {
    captures()
        .into_iter()
        .map(|(file, expected)| {
            let bytes = read_data(file);
            // Each capture is a single record.
            let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            (bytes[5..5 + len].to_vec(), expected)
        })
        .collect()
}

#[test]
fn built_hellos() {
    let b = HelloBuilder::default;
    let cases: Vec<(&str, HelloBuilder, ClientHello)> = vec![
        ("no extensions block", HelloBuilder { extensions: None, ..b() }, hello(None, &[], &[0x0303])),
        ("empty extensions block", b(), hello(None, &[], &[0x0303])),
        (
            "tls 1.0 legacy version",
            HelloBuilder { legacy_version: 0x0301, extensions: None, ..b() },
            hello(None, &[], &[0x0301]),
        ),
        ("sni lowercased", b().sni("Api.EXAMPLE.com"), hello(Some("api.example.com"), &[], &[0x0303])),
        (
            "sni with digits and punctuation",
            b().sni("xn--bcher-kva.example-1.com"),
            hello(Some("xn--bcher-kva.example-1.com"), &[], &[0x0303]),
        ),
        ("sni at 255 bytes", b().sni(&"a".repeat(255)), hello(Some(&"a".repeat(255)), &[], &[0x0303])),
        (
            "alpn keeps client order",
            b().alpn(&["grpc-exp", "h2", "http/1.1"]),
            hello(None, &["grpc-exp", "h2", "http/1.1"], &[0x0303]),
        ),
        ("alpn single", b().alpn(&["h2"]), hello(None, &["h2"], &[0x0303])),
        (
            "alpn non-utf8 name skipped",
            b().ext(EXT_ALPN, alpn_data(&[b"\xff\xfe", b"h2"])),
            hello(None, &["h2"], &[0x0303]),
        ),
        (
            "supported_versions replaces legacy, grease dropped",
            b().versions(&[0x7a7a, 0x0304, 0x0303]),
            hello(None, &[], &[0x0304, 0x0303]),
        ),
        (
            "unknown name type before host_name",
            b().ext(EXT_SERVER_NAME, sni_data(&[(7, b"opaque"), (0, b"Host.Test")])),
            hello(Some("host.test"), &[], &[0x0303]),
        ),
        (
            "server_name without host_name",
            b().ext(EXT_SERVER_NAME, sni_data(&[(7, b"opaque")])),
            hello(None, &[], &[0x0303]),
        ),
        (
            "everything, unknown extensions around",
            b().ext(0xfafa, vec![])
                .sni("x.example.com")
                .ext(10, vec![0, 2, 0, 29])
                .alpn(&["h2", "http/1.1"])
                .versions(&[0x0304])
                .ext(EXT_PADDING, vec![0; 100]),
            hello(Some("x.example.com"), &["h2", "http/1.1"], &[0x0304]),
        ),
        ("empty session id", HelloBuilder { session_id: vec![], ..b().sni("a.b") }, hello(Some("a.b"), &[], &[0x0303])),
    ];
    for (name, builder, expected) in cases {
        for chunk in [1, 2, 3, 7, 100, 1 << 14] {
            assert_eq!(parse_client_hello(&builder.records(chunk)), Ok(expected.clone()), "{name}, records of {chunk}");
        }
    }
}

#[test]
fn split_records_of_real_hellos() {
    for (message, expected) in capture_messages() {
        for chunk in [1, 2, 3, 4, 5, 13, 64, 200, 1 << 14] {
            let framed = weft_sniff::fuzzing::frame_records(&message, chunk);
            assert_eq!(parse_client_hello(&framed), Ok(expected.clone()), "chunk {chunk}");
        }
    }
}

#[test]
fn every_truncation_is_incomplete() {
    let mut inputs: Vec<Vec<u8>> = captures().iter().map(|(f, _)| read_data(f)).collect();
    for (message, _) in capture_messages() {
        inputs.push(weft_sniff::fuzzing::frame_records(&message, 1));
        inputs.push(weft_sniff::fuzzing::frame_records(&message, 7));
    }
    inputs.push(HelloBuilder::default().sni("a.example").alpn(&["h2"]).records(50));
    for input in inputs {
        assert!(parse_client_hello(&input).is_ok());
        for len in 0..input.len() {
            assert_eq!(
                parse_client_hello(&input[..len]),
                Err(SniffError::Incomplete),
                "truncated to {len} of {}",
                input.len()
            );
        }
    }
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let builder = HelloBuilder::default().sni("a.example");
    let expected = parse_client_hello(&builder.records(1 << 14));
    // A TLS 1.3 middlebox-compat ChangeCipherSpec and early data may follow.
    let mut input = builder.records(1 << 14);
    input.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    input.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x03, 1, 2, 3]);
    assert_eq!(parse_client_hello(&input), expected);

    // The last record also carries bytes past the hello's end.
    let mut message = builder.message();
    message.extend_from_slice(&[0xee; 10]);
    let input = weft_sniff::fuzzing::frame_records(&message, 1 << 14);
    assert_eq!(parse_client_hello(&input), expected);
}

/// Replaces the bytes at `at` in a valid single-record hello.
fn patched(builder: &HelloBuilder, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut input = builder.records(1 << 14);
    input[at..at + bytes.len()].copy_from_slice(bytes);
    input
}

#[test]
fn garbage_is_rejected() {
    let ok = HelloBuilder::default().sni("a.example");
    let mut second_record_alert = ok.records(20);
    second_record_alert[25] = 0x15;
    let mut second_record_bad_version = ok.records(20);
    second_record_bad_version[27] = 0x07;
    let malformed = |what| Err::<ClientHello, _>(SniffError::Malformed(what));

    let cases: Vec<(&str, Vec<u8>, Result<ClientHello, SniffError>)> = vec![
        ("http", b"GET / HTTP/1.1\r\n".to_vec(), Err(SniffError::NotTls)),
        ("h2 preface", b"PRI * HTTP/2.0\r\n".to_vec(), Err(SniffError::NotTls)),
        ("one byte", vec![0x00], Err(SniffError::NotTls)),
        ("alert record", vec![0x15, 0x03, 0x03, 0x00, 0x02, 2, 40], Err(SniffError::NotTls)),
        ("sslv2 hello", vec![0x80, 0x2e, 0x01, 0x00, 0x02], Err(SniffError::NotTls)),
        ("record major 2", vec![0x16, 0x02], Err(SniffError::NotTls)),
        ("record minor 5", vec![0x16, 0x03, 0x05], Err(SniffError::NotTls)),
        ("empty record", vec![0x16, 0x03, 0x01, 0x00, 0x00], malformed("empty handshake record")),
        ("oversized record", vec![0x16, 0x03, 0x01, 0x40, 0x01], malformed("record longer than 2^14 bytes")),
        (
            "server hello",
            vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x46],
            malformed("first handshake message is not a ClientHello"),
        ),
        ("zero-length hello", vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00], malformed("legacy_version")),
        ("alert between fragments", second_record_alert, malformed("non-handshake record inside ClientHello")),
        ("bad version in second record", second_record_bad_version, malformed("record version")),
        ("legacy_version 2.0", patched(&ok, 9, &[0x02, 0x00]), malformed("legacy_version")),
        ("session id of 33", patched(&ok, 43, &[33]), malformed("legacy_session_id longer than 32 bytes")),
    ];
    for (name, input, expected) in cases {
        assert_eq!(parse_client_hello(&input), expected, "{name}");
    }
}

#[test]
fn malformed_fields() {
    let b = HelloBuilder::default;
    let cases: Vec<(&str, HelloBuilder, &str)> = vec![
        ("odd cipher suites", HelloBuilder { cipher_suites: vec![0x13, 0x01, 0x00], ..b() }, "cipher_suites"),
        ("no cipher suites", HelloBuilder { cipher_suites: vec![], ..b() }, "cipher_suites"),
        ("no compression", HelloBuilder { compression: vec![], ..b() }, "legacy_compression_methods is empty"),
        ("trailing body bytes", HelloBuilder { trailer: vec![0], ..b() }, "trailing bytes after extensions"),
        ("empty host_name", b().sni(""), "empty host_name"),
        ("host_name with space", b().sni("a b.example"), "host_name is not printable ASCII"),
        ("host_name with NUL", b().sni("a\0.example"), "host_name is not printable ASCII"),
        ("host_name with DEL", b().sni("a\x7f.example"), "host_name is not printable ASCII"),
        ("host_name non-ascii", b().sni("bücher.example"), "host_name is not printable ASCII"),
        ("host_name too long", b().sni(&"a".repeat(256)), "host_name too long"),
        (
            "two host_names",
            b().ext(EXT_SERVER_NAME, sni_data(&[(0, b"a.example"), (0, b"b.example")])),
            "more than one host_name",
        ),
        ("empty server_name_list", b().ext(EXT_SERVER_NAME, vec16(&[])), "empty server_name_list"),
        ("empty server_name extension", b().ext(EXT_SERVER_NAME, vec![]), "server_name_list"),
        (
            "server_name_list overruns extension",
            b().ext(EXT_SERVER_NAME, vec![0x00, 0x09, 0x00, 0x00, 0x01, b'a']),
            "server_name_list",
        ),
        (
            "bytes after server_name_list",
            b().ext(EXT_SERVER_NAME, [sni_data(&[(0, b"a")]), vec![0]].concat()),
            "server_name extension",
        ),
        ("duplicate server_name", b().sni("a.example").sni("b.example"), "duplicate extension"),
        ("duplicate unknown extension", b().ext(0x1234, vec![]).ext(0x1234, vec![]), "duplicate extension"),
        ("empty alpn name", b().ext(EXT_ALPN, alpn_data(&[b"h2", b""])), "empty protocol name"),
        ("empty alpn list", b().ext(EXT_ALPN, vec16(&[])), "protocol_name_list too short"),
        ("alpn name overruns list", b().ext(EXT_ALPN, vec16(&[5, b'h', b'2'])), "protocol name"),
        ("odd supported_versions", b().ext(EXT_SUPPORTED_VERSIONS, vec8(&[3, 4, 3])), "supported_versions"),
        ("empty supported_versions", b().ext(EXT_SUPPORTED_VERSIONS, vec8(&[])), "supported_versions"),
        (
            "extension overruns block",
            HelloBuilder { raw_extensions: Some(vec![0x12, 0x34, 0x00, 0x05, 1, 2]), ..b() },
            "extension data",
        ),
        ("half an extension type", HelloBuilder { raw_extensions: Some(vec![0x12]), ..b() }, "extension type"),
        (
            "extensions block overruns body",
            HelloBuilder { extensions: None, trailer: vec![0x00, 0x09], ..b() },
            "extensions",
        ),
    ];
    for (name, builder, field) in cases {
        for chunk in [3, 1 << 14] {
            assert_eq!(
                parse_client_hello(&builder.records(chunk)),
                Err(SniffError::Malformed(field)),
                "{name}, records of {chunk}"
            );
        }
    }
}

#[test]
fn malformed_prefix_is_reported_before_the_rest_arrives() {
    // Each input is cut right after the offending field, long before the
    // hello's declared end: waiting for more bytes would be pointless.
    let b = HelloBuilder::default;
    let big = || b().ext(EXT_PADDING, vec![0; 1000]);
    let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        (
            "session id length",
            HelloBuilder { session_id: vec![0; 33], ..big() }.records(1 << 14),
            44,
            "legacy_session_id longer than 32 bytes",
        ),
        (
            "odd cipher suites",
            HelloBuilder { cipher_suites: vec![0; 3], ..big() }.records(1 << 14),
            44 + 32 + 2,
            "cipher_suites",
        ),
        (
            "bad host_name byte",
            b().sni("a\x01.example").ext(EXT_PADDING, vec![0; 1000]).records(1 << 14),
            0,
            "host_name is not printable ASCII",
        ),
        (
            "not a client hello",
            vec![0x16, 0x03, 0x01, 0x00, 0x01, 0x02],
            6,
            "first handshake message is not a ClientHello",
        ),
    ];
    for (name, input, cut, field) in cases {
        let cut = if cut == 0 {
            // Just past the bad byte.
            input.windows(2).position(|w| w == b"a\x01").map_or(input.len(), |p| p + 2)
        } else {
            cut
        };
        assert!(cut < input.len() || name == "not a client hello", "{name}");
        assert_eq!(parse_client_hello(&input[..cut]), Err(SniffError::Malformed(field)), "{name}");
    }
}

/// A hello whose single-record framing takes exactly `raw` bytes.
fn hello_of_raw_size(raw: usize) -> HelloBuilder {
    let base = HelloBuilder::default().sni("big.example").ext(EXT_PADDING, vec![]);
    let base_raw = base.records(1 << 14).len();
    // Each extra 16 KiB record costs a 5-byte header.
    let mut pad = raw - base_raw;
    loop {
        let candidate = HelloBuilder::default().sni("big.example").ext(EXT_PADDING, vec![0; pad]);
        let len = candidate.records(1 << 14).len();
        if len == raw {
            return candidate;
        }
        pad -= len - raw;
    }
}

#[test]
fn size_cap() {
    let at_cap = hello_of_raw_size(MAX_PEEK);
    let input = at_cap.records(1 << 14);
    assert_eq!(input.len(), MAX_PEEK);
    let expected = hello(Some("big.example"), &[], &[0x0303]);
    assert_eq!(parse_client_hello(&input), Ok(expected.clone()));
    // Bytes past the cap do not matter.
    let mut longer = input.clone();
    longer.extend_from_slice(&[0; 100]);
    assert_eq!(parse_client_hello(&longer), Ok(expected));

    let over = hello_of_raw_size(MAX_PEEK + 1).records(1 << 14);
    assert_eq!(over.len(), MAX_PEEK + 1);
    assert_eq!(parse_client_hello(&over), Err(SniffError::TooLarge));
    // Known to be too large from the handshake header alone.
    assert_eq!(parse_client_hello(&over[..9]), Err(SniffError::TooLarge));
    assert_eq!(parse_client_hello(&over[..8]), Err(SniffError::Incomplete));

    // The same message fits in 16 KiB records but not in tiny ones, whose
    // headers alone push it over; that is known before the cap is reached.
    let message_len = at_cap.message().len();
    let tiny = at_cap.records(100);
    assert!(tiny.len() > MAX_PEEK);
    let verdicts: Vec<_> = (0..=MAX_PEEK).step_by(997).map(|len| parse_client_hello(&tiny[..len])).collect();
    assert!(verdicts.contains(&Err(SniffError::Incomplete)));
    assert_eq!(verdicts.last(), Some(&Err(SniffError::TooLarge)));
    let first_too_large =
        (0..=MAX_PEEK).find(|&len| parse_client_hello(&tiny[..len]) == Err(SniffError::TooLarge)).unwrap_or(usize::MAX);
    assert!(first_too_large < MAX_PEEK, "{first_too_large} for a {message_len}-byte message");
    assert_eq!(parse_client_hello(&tiny), Err(SniffError::TooLarge));

    let huge_header = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff];
    assert_eq!(parse_client_hello(&huge_header), Err(SniffError::TooLarge));
}

#[test]
fn errors_display() {
    assert_eq!(SniffError::Malformed("cipher_suites").to_string(), "malformed ClientHello: cipher_suites");
    assert_eq!(SniffError::TooLarge.to_string(), "ClientHello does not fit in 65536 bytes");
}

/// Writes the seed corpus for `fuzz/corpus/client_hello`; run with
/// `cargo test -p weft-sniff --test client_hello -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = fuzz_corpus_dir("client_hello");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (file, _) in captures() {
        seeds.push((format!("seed-{file}"), read_data(file)));
    }
    for (i, (message, _)) in capture_messages().into_iter().enumerate() {
        seeds.push((format!("seed-capture{i}-records7.bin"), weft_sniff::fuzzing::frame_records(&message, 7)));
    }
    let b = HelloBuilder::default;
    let built = [
        ("no-ext", HelloBuilder { extensions: None, ..b() }),
        (
            "sni-alpn-versions",
            b().sni("Mixed.Case.Example").alpn(&["h2", "http/1.1"]).versions(&[0x3a3a, 0x0304, 0x0303]),
        ),
        ("sni-multi", b().ext(EXT_SERVER_NAME, sni_data(&[(7, b"x"), (0, b"a.example")]))),
        ("alpn-nonutf8", b().ext(EXT_ALPN, alpn_data(&[b"\xff", b"h2"]))),
    ];
    for (name, builder) in built {
        seeds.push((format!("seed-built-{name}.bin"), builder.records(1 << 14)));
        seeds.push((format!("seed-built-{name}-records3.bin"), builder.records(3)));
    }
    for (name, bytes) in [
        ("http1", &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]),
        ("h2-preface", &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..]),
        ("empty-record", &[0x16, 0x03, 0x01, 0x00, 0x00][..]),
    ] {
        seeds.push((format!("seed-{name}.bin"), bytes.to_vec()));
    }
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
