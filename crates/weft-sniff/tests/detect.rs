use weft_sniff::{detect, is_http2_preface_prefix, Detected, HTTP2_PREFACE};

#[test]
fn detect_table() {
    use Detected::*;
    let cases: &[(&[u8], Detected)] = &[
        (b"", NeedMore),
        // TLS record headers.
        (&[0x16], NeedMore),
        (&[0x16, 0x03], NeedMore),
        (&[0x16, 0x03, 0x00], Tls),
        (&[0x16, 0x03, 0x01], Tls),
        (&[0x16, 0x03, 0x03, 0x00, 0xf4, 0x01], Tls),
        (&[0x16, 0x03, 0x04], Tls),
        (&[0x16, 0x03, 0x05], Other),
        (&[0x16, 0x02, 0x00], Other),
        (&[0x16, 0x04], Other),
        (&[0x15, 0x03, 0x03], Other),
        (&[0x17, 0x03, 0x03, 0x00, 0x10], Other),
        (&[0x80, 0x2e, 0x01, 0x03, 0x01], Other),
        // The HTTP/2 preface, and what only looks like its start.
        (b"P", NeedMore),
        (b"PR", NeedMore),
        (b"PRI", NeedMore),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r", NeedMore),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2Preface),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00", Http2Preface),
        (b"PRI * HTTP/1.1\r\n", Http1),
        (b"PRI / HTTP/2.0\r\n\r\nSM\r\n\r\n", Http1),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", Http1),
        (b"PRIX", NeedMore),
        (b"PRIX /", Http1),
        // HTTP/1 request lines.
        (b"G", NeedMore),
        (b"GE", NeedMore),
        (b"GET", NeedMore),
        (b"GET ", Http1),
        (b"GET / HTTP/1.1\r\n", Http1),
        (b"PO", NeedMore),
        (b"POST /submit HTTP/1.1\r\n", Http1),
        (b"PUT /x HTTP/1.1\r\n", Http1),
        (b"DELETE /x HTTP/1.1\r\n", Http1),
        (b"HEAD / HTTP/1.0\r\n", Http1),
        (b"OPTIONS * HTTP/1.1\r\n", Http1),
        (b"PATCH /x HTTP/1.1\r\n", Http1),
        (b"CONNECT a.example:443 HTTP/1.1\r\n", Http1),
        (b"TRACE / HTTP/1.1\r\n", Http1),
        (b"PROPFIND /dav HTTP/1.1\r\n", Http1),
        (b"M-SEARCH * HTTP/1.1\r\n", Http1),
        (b"get / HTTP/1.1\r\n", Http1),
        (b"UPDATEREDIRECTREF", NeedMore),
        // Not a request line.
        (b" GET /", Other),
        (b"GET\t/", Other),
        (b"GET\r\n", Other),
        (b"GE(T /", Other),
        (b"\r\n", Other),
        (b"SSH-2.0-OpenSSH_9.6\r\n", Other),
        (b"\x00\x00\x00\x00", Other),
        (&[0xff, 0xfe], Other),
        (b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Other),
        (b"{\"jsonrpc\":\"2.0\"}", Other),
    ];
    for (input, expected) in cases {
        assert_eq!(detect(input), *expected, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn decisions_never_change_as_bytes_arrive() {
    let inputs: &[&[u8]] = &[
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
        b"PRI * HTTP/1.1\r\n",
        b"POST / HTTP/1.1\r\n",
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        b"SSH-2.0-x\r\n",
    ];
    for input in inputs {
        let full = detect(input);
        for len in 0..=input.len() {
            let early = detect(&input[..len]);
            assert!(early == Detected::NeedMore || early == full, "{input:?} at {len}");
        }
    }
}

#[test]
fn preface_prefix() {
    let cases: &[(&[u8], bool)] = &[
        (b"", true),
        (b"P", true),
        (b"PRI * HTTP/2.0\r\n", true),
        (HTTP2_PREFACE, true),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04", true),
        (b"PRI * HTTP/1.1", false),
        (b"GET", false),
        (b"pri", false),
    ];
    for (input, expected) in cases {
        assert_eq!(is_http2_preface_prefix(input), *expected, "{input:?}");
    }
}
