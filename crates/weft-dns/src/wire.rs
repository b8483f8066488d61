//! DNS messages on the wire: queries read with hickory-proto, answers built with it, and the
//! few byte-level edits that let a cached answer be sent again cheaply (its id, the question as
//! the client spelled it, decremented TTLs, an OPT record for EDNS clients).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::table::Entry;

/// The UDP payload size `weft dns` advertises and asks upstreams for (the DNS flag day value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP answer to a client without EDNS.
pub const CLASSIC_UDP: usize = 512;

const OPT: u16 = 41;
const TSIG: u16 = 250;

/// One question from a client.
#[derive(Clone, Debug)]
pub struct Query {
    pub id: u16,
    /// The name as the client spelled it.
    pub name: Name,
    /// Lowercase, no trailing dot.
    pub qname: String,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub rd: bool,
    /// The client's EDNS payload size, when it sent an OPT record.
    pub edns: Option<u16>,
    /// The question section's bytes in the client's packet (copied into cached answers so the
    /// client sees its own spelling), when the name is not compressed.
    pub question: Option<Vec<u8>>,
}

impl Query {
    /// The largest answer this client takes over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(p) => (p as usize).clamp(CLASSIC_UDP, EDNS_PAYLOAD as usize * 4),
            None => CLASSIC_UDP,
        }
    }
}

/// What a packet from a client is.
#[derive(Debug)]
pub enum Parsed {
    Query(Query),
    /// Not a question `weft dns` can answer: send this error (FORMERR, NOTIMP).
    Reply(Vec<u8>),
    /// Not worth an answer (a response, or too short to carry an id).
    Drop,
}

/// Reads a DNS message from untrusted bytes. The framing is walked first, and messages with a
/// TSIG record (which `weft dns` does not use, and whose decoder can fail on overflow) are
/// refused before hickory-proto sees them; a panic inside the decoder is caught and counts as
/// an unreadable message, so no input takes the server down.
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    let records = walk(bytes).ok_or("message cut short")?;
    if records.types.contains(&TSIG) {
        return Err("TSIG records are not supported".into());
    }
    match std::panic::catch_unwind(|| Message::from_vec(bytes)) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("decoder failed".into()),
    }
}

/// Reads a client packet.
pub fn parse_query(packet: &[u8]) -> Parsed {
    let msg = match decode(packet) {
        Ok(m) => m,
        Err(_) => return header_error(packet, ResponseCode::FormErr),
    };
    if msg.metadata.message_type != MessageType::Query {
        return Parsed::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        return header_error(packet, ResponseCode::NotImp);
    }
    if msg.queries.len() != 1 {
        return header_error(packet, ResponseCode::FormErr);
    }
    let q = &msg.queries[0];
    // Only a name written out in full (no compression pointer) can be copied as it is.
    let question = plain_name_end(packet, 12)
        .map(|end| end + 4)
        .filter(|end| *end <= packet.len())
        .map(|end| packet[12..end].to_vec());
    Parsed::Query(Query {
        id: msg.metadata.id,
        qname: crate::lookup::normalize_query(&q.name.to_ascii()),
        name: q.name.clone(),
        qtype: q.query_type,
        qclass: q.query_class,
        rd: msg.metadata.recursion_desired,
        edns: msg.edns.as_ref().map(|e| e.max_payload()),
        question,
    })
}

/// A header-only error answer for a packet that is a query but cannot be read as one.
fn header_error(packet: &[u8], rcode: ResponseCode) -> Parsed {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Parsed::Drop;
    }
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&packet[..2]);
    // QR, the opcode and RD as asked; RA; the rcode's low bits.
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
    Parsed::Reply(out)
}

fn response(q: &Query, rcode: ResponseCode, authoritative: bool) -> Message {
    let mut m = Message::response(q.id, OpCode::Query);
    m.metadata.recursion_desired = q.rd;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = authoritative;
    m.metadata.response_code = rcode;
    let mut hq = HQuery::query(q.name.clone(), q.qtype);
    hq.query_class = q.qclass;
    m.queries.push(hq);
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(e);
    }
    m
}

fn encode(m: &Message) -> Vec<u8> {
    // Encoding a message built from valid names and addresses does not fail; should it, the
    // client gets a header-only SERVFAIL rather than nothing.
    m.to_vec().unwrap_or_else(|_| {
        let mut out = vec![0u8; 12];
        out[..2].copy_from_slice(&m.metadata.id.to_be_bytes());
        out[2] = 0x80;
        out[3] = 0x82;
        out
    })
}

/// The start of authority of a mesh zone, for negative answers (RFC 2308: its minimum is how
/// long clients may cache the negative answer).
fn soa(zone: &str, ttl: u32) -> Option<Record> {
    let origin = Name::from_ascii(format!("{zone}.")).ok()?;
    let mname = Name::from_ascii(format!("weft-dns.{zone}.")).ok()?;
    let rname = Name::from_ascii(format!("hostmaster.{zone}.")).ok()?;
    let ttl_i = ttl.min(i32::MAX as u32) as i32;
    let data = SOA::new(mname, rname, 1, ttl_i, ttl_i, ttl_i.saturating_mul(10), ttl);
    Some(Record::from_rdata(origin, ttl, RData::SOA(data)))
}

/// The answer for a mesh name: its addresses of the asked type (none: NODATA, with the zone's
/// SOA), after a CNAME from the search-domain expansion the client asked to the entry's host.
pub fn mesh_answer(q: &Query, entry: &Entry, alias: bool, ttl: u32, zone: Option<&str>) -> Vec<u8> {
    let mut m = response(q, ResponseCode::NoError, true);
    let mut owner = q.name.clone();
    if alias {
        if let Ok(target) = Name::from_ascii(format!("{}.", entry.host)) {
            m.answers.push(Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target.clone()))));
            owner = target;
        }
    }
    if !(alias && q.qtype == RecordType::CNAME) {
        for ip in crate::lookup::addresses(entry, u16::from(q.qtype)) {
            let data = match ip {
                IpAddr::V4(a) => RData::A(A(a)),
                IpAddr::V6(a) => RData::AAAA(AAAA(a)),
            };
            m.answers.push(Record::from_rdata(owner.clone(), ttl, data));
        }
    }
    if m.answers.is_empty() {
        m.authorities.extend(soa(zone.unwrap_or(&entry.host), ttl));
    }
    encode(&m)
}

/// The common mesh answer written directly: addresses of the asked family at the name the
/// client asked, after the client's own question (a pointer to it names each record). The same
/// bytes `mesh_answer` would produce, without building a message; `None` when the question is
/// not the plain case (an alias, NODATA, a compressed question, a class other than IN).
pub fn mesh_answer_fast(q: &Query, entry: &Entry, ttl: u32) -> Option<Vec<u8>> {
    let question = q.question.as_ref()?;
    let (rtype, len): (u16, usize) = match q.qtype {
        RecordType::A if !entry.v4.is_empty() => (1, entry.v4.len()),
        RecordType::AAAA if !entry.v6.is_empty() => (28, entry.v6.len()),
        _ => return None,
    };
    if q.qclass != DNSClass::IN {
        return None;
    }
    let rdlen: u16 = if rtype == 1 { 4 } else { 16 };
    let mut out = Vec::with_capacity(12 + question.len() + len * (12 + rdlen as usize) + 11);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x84 | u8::from(q.rd)); // QR, AA, RD as asked
    out.push(0x80); // RA, NOERROR
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(q.edns.is_some())]);
    out.extend_from_slice(question);
    let mut record = |data: &[u8]| {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&rdlen.to_be_bytes());
        out.extend_from_slice(data);
    };
    if rtype == 1 {
        entry.v4.iter().for_each(|a| record(&a.octets()));
    } else {
        entry.v6.iter().for_each(|a| record(&a.octets()));
    }
    if q.edns.is_some() {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    Some(out)
}

/// NXDOMAIN for a name of a mesh zone, with the zone's SOA.
pub fn nxdomain(q: &Query, zone: &str, ttl: u32) -> Vec<u8> {
    let mut m = response(q, ResponseCode::NXDomain, true);
    m.authorities.extend(soa(zone, ttl));
    encode(&m)
}

/// An error answer (SERVFAIL, REFUSED) to a readable question.
pub fn error(q: &Query, rcode: ResponseCode) -> Vec<u8> {
    encode(&response(q, rcode, false))
}

/// The query `weft dns` sends upstream for a client's question: a fresh id, recursion desired,
/// EDNS with its own payload size.
pub fn upstream_query(q: &Query, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    let mut hq = HQuery::query(q.name.clone(), q.qtype);
    hq.query_class = q.qclass;
    m.queries.push(hq);
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    m.set_edns(e);
    encode(&m)
}

/// Whether an upstream packet answers the query `id` for the question `q`.
pub fn answers(resp: &Message, id: u16, q: &Query) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].query_type == q.qtype
        && resp.queries[0].query_class == q.qclass
        && resp.queries[0].name.to_ascii().eq_ignore_ascii_case(&q.name.to_ascii())
}

/// An upstream answer made ready to send again: without id and OPT record, with where its
/// TTLs are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub wire: Vec<u8>,
    pub ttl_offsets: Vec<usize>,
    /// How long it may be kept (seconds).
    pub ttl: u32,
    /// NXDOMAIN or NODATA.
    pub negative: bool,
}

/// What of an upstream answer may be cached, and for how long (RFC 2308 for negative answers:
/// the SOA's TTL capped by its minimum; without an SOA they are not cached). SERVFAIL, REFUSED,
/// truncated answers and TTLs of zero are not cached.
pub fn storable(resp: &Message, max_ttl: u32) -> Option<Stored> {
    if resp.metadata.truncation || resp.metadata.message_type != MessageType::Response {
        return None;
    }
    let rcode = resp.metadata.response_code;
    let answers = resp.answers.iter().filter(|r| r.record_type() != RecordType::OPT);
    let (ttl, negative) = match rcode {
        ResponseCode::NoError if resp.answers.iter().any(|r| r.record_type() != RecordType::OPT) => {
            (answers.map(|r| r.ttl).min()?, false)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = resp.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            })?;
            (soa, true)
        }
        _ => return None,
    };
    let ttl = ttl.min(max_ttl);
    if ttl == 0 {
        return None;
    }
    let mut m = resp.clone();
    m.metadata.id = 0;
    m.edns = None;
    m.signature = None;
    m.additionals.retain(|r| r.record_type() != RecordType::OPT);
    let wire = m.to_vec().ok()?;
    let (_, ttl_offsets) = ttl_offsets(&wire)?;
    Some(Stored { wire, ttl_offsets, ttl, negative })
}

/// A stored answer for a client: its id and RD flag, its spelling of the question, TTLs less
/// `elapsed` seconds, and an OPT record when it used EDNS.
pub fn from_stored(s: &Stored, q: &Query, elapsed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.wire.len() + 11);
    out.extend_from_slice(&s.wire);
    out[..2].copy_from_slice(&q.id.to_be_bytes());
    // QR and the client's RD; RA.
    out[2] = (out[2] & !0x01) | 0x80 | u8::from(q.rd);
    out[3] |= 0x80;
    if let Some(question) = &q.question {
        if out.len() >= 12 + question.len() && out[12..12 + question.len()].eq_ignore_ascii_case(question) {
            out[12..12 + question.len()].copy_from_slice(question);
        }
    }
    for &o in &s.ttl_offsets {
        if let Some(b) = out.get_mut(o..o + 4) {
            let ttl = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).saturating_sub(elapsed);
            b.copy_from_slice(&ttl.to_be_bytes());
        }
    }
    if q.edns.is_some() {
        let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
        out[10..12].copy_from_slice(&ar.to_be_bytes());
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// An upstream answer that is not cached, relayed to the client under its id and question.
pub fn relay(resp: &Message, q: &Query) -> Vec<u8> {
    let mut m = resp.clone();
    m.metadata.id = q.id;
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.rd;
    m.queries.clear();
    let mut hq = HQuery::query(q.name.clone(), q.qtype);
    hq.query_class = q.qclass;
    m.queries.push(hq);
    m.signature = None;
    m.additionals.retain(|r| r.record_type() != RecordType::OPT);
    m.edns = q.edns.map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e
    });
    encode(&m)
}

/// An answer cut to fit a UDP client: header and question with TC set (the client asks again
/// over TCP), when it is larger than `limit`.
pub fn fit_udp(answer: Vec<u8>, limit: usize) -> Vec<u8> {
    if answer.len() <= limit {
        return answer;
    }
    let end = match skip_name(&answer, 12) {
        Some(e) if e + 4 <= answer.len() && u16::from_be_bytes([answer[4], answer[5]]) == 1 => e + 4,
        _ => 12,
    };
    let mut out = answer[..end.min(answer.len())].to_vec();
    if out.len() < 12 {
        return out;
    }
    out[2] |= 0x02;
    let qd: u16 = if end > 12 { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    out
}

/// The offset after the name at `at`, following the wire rules (a compression pointer ends it).
pub fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *b.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len as usize,
            0xc0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
    None
}

/// The offset after the name at `at` when it is written out in full, without a pointer.
fn plain_name_end(b: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + len as usize,
            _ => return None,
        }
    }
    None
}

/// A message's framing: where the question section ends, and every record's type and TTL offset.
struct Walked {
    question_end: usize,
    types: Vec<u16>,
    ttl_offsets: Vec<usize>,
}

fn walk(b: &[u8]) -> Option<Walked> {
    if b.len() < 12 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as usize;
    let (qd, records) = (count(4), count(6) + count(8) + count(10));
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
        if at > b.len() {
            return None;
        }
    }
    let question_end = at;
    let mut w = Walked { question_end, types: Vec::new(), ttl_offsets: Vec::new() };
    for _ in 0..records {
        at = skip_name(b, at)?;
        let fixed = b.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        w.types.push(rtype);
        w.ttl_offsets.push(at + 4);
        at += 10 + rdlen;
        if at > b.len() {
            return None;
        }
    }
    Some(w)
}

/// Walks a message: the end of the question section and the offsets of every record's TTL
/// (not the OPT record's, whose TTL field holds flags). `None` when the message is cut short.
pub fn ttl_offsets(b: &[u8]) -> Option<(usize, Vec<usize>)> {
    let w = walk(b)?;
    let offsets = w.types.iter().zip(&w.ttl_offsets).filter(|(t, _)| **t != OPT).map(|(_, o)| *o).collect();
    Some((w.question_end, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn query_packet(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.queries.push(HQuery::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn parse(p: &[u8]) -> Query {
        match parse_query(p) {
            Parsed::Query(q) => q,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_packets_get_formerr_notimp_or_nothing() {
        let mut ok = query_packet("a.example.", RecordType::A, false);
        assert!(matches!(parse_query(&ok), Parsed::Query(_)));
        assert!(matches!(parse_query(&ok[..5]), Parsed::Drop), "no full header: nothing to answer");
        match parse_query(&ok[..14]) {
            Parsed::Reply(r) => assert_eq!((r[0], r[1], r[3] & 0x0f, r[2] & 0x80), (0x12, 0x34, 1, 0x80)),
            other => panic!("{other:?}"),
        }
        ok[2] |= 0x80;
        assert!(matches!(parse_query(&ok), Parsed::Drop), "a response is not answered");
        let mut update = query_packet("a.example.", RecordType::A, false);
        update[2] = (update[2] & 0x87) | (5 << 3);
        match parse_query(&update) {
            Parsed::Reply(r) => assert_eq!(r[3] & 0x0f, 4, "NOTIMP"),
            Parsed::Drop => panic!("dropped"),
            Parsed::Query(_) => panic!("an UPDATE answered as a query"),
        }
    }

    #[test]
    fn mesh_answers_carry_cname_addresses_or_soa() {
        let entry = Entry {
            host: "reviews.shop.svc.cluster.local".into(),
            v4: vec![Ipv4Addr::new(240, 240, 0, 1)],
            v6: vec![],
        };
        let q = parse(&query_packet("reviews.corp.example.", RecordType::A, true));
        let m = Message::from_vec(&mesh_answer(&q, &entry, true, 30, None)).unwrap();
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(m.answers[1].name.to_ascii(), "reviews.shop.svc.cluster.local.");
        assert_eq!(m.answers[1].data, RData::A(A(Ipv4Addr::new(240, 240, 0, 1))));
        assert!(m.edns.is_some(), "EDNS answered with EDNS");

        let q = parse(&query_packet("reviews.", RecordType::AAAA, false));
        let m = Message::from_vec(&mesh_answer(&q, &entry, false, 30, Some("cluster.local"))).unwrap();
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "NODATA");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert!(m.edns.is_none());

        let m = Message::from_vec(&nxdomain(&q, "cluster.local", 30)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].name.to_ascii(), "cluster.local.");
    }

    #[test]
    fn stored_answers_come_back_with_the_clients_id_spelling_and_aged_ttls() {
        let q_up = parse(&query_packet("www.example.com.", RecordType::A, false));
        let mut resp = Message::response(77, OpCode::Query);
        resp.queries.push(HQuery::query(Name::from_ascii("www.example.com.").unwrap(), RecordType::A));
        let owner = Name::from_ascii("www.example.com.").unwrap();
        resp.answers.push(Record::from_rdata(owner.clone(), 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
        resp.answers.push(Record::from_rdata(owner, 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 2)))));
        let mut e = Edns::new();
        e.set_max_payload(4096);
        resp.set_edns(e);
        assert!(answers(&resp, 77, &q_up));
        assert!(!answers(&resp, 78, &q_up));
        let s = storable(&resp, 86_400).unwrap();
        assert_eq!((s.ttl, s.negative, s.ttl_offsets.len()), (60, false, 2));

        let q = parse(&query_packet("WWW.Example.com.", RecordType::A, true));
        let out = from_stored(&s, &q, 10);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.queries[0].name.to_ascii(), "WWW.Example.com.");
        assert_eq!(m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [290, 50]);
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        let plain =
            Message::from_vec(&from_stored(&s, &parse(&query_packet("www.example.com.", RecordType::A, false)), 100))
                .unwrap();
        assert!(plain.edns.is_none());
        assert_eq!(plain.answers[1].ttl, 0);
    }

    #[test]
    fn negative_answers_are_stored_for_the_soa_minimum() {
        let mut resp = Message::response(1, OpCode::Query);
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.queries.push(HQuery::query(Name::from_ascii("nope.example.").unwrap(), RecordType::A));
        assert_eq!(storable(&resp, 86_400), None, "no SOA: not cached");
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 1, 1, 1, 5);
        resp.authorities.push(Record::from_rdata(zone, 3600, RData::SOA(soa)));
        let s = storable(&resp, 86_400).unwrap();
        assert_eq!((s.ttl, s.negative), (5, true));
        resp.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(storable(&resp, 86_400), None);
    }

    #[test]
    fn fast_mesh_answers_equal_built_ones() {
        let entry = Entry {
            host: "reviews.shop.svc.cluster.local".into(),
            v4: vec![Ipv4Addr::new(240, 240, 0, 1), Ipv4Addr::new(240, 240, 0, 2)],
            v6: vec!["fd00::1".parse().unwrap()],
        };
        for (name, qtype, edns) in [
            ("reviews.", RecordType::A, false),
            ("Reviews.Shop.", RecordType::A, true),
            ("reviews.shop.svc.cluster.local.", RecordType::AAAA, true),
        ] {
            let q = parse(&query_packet(name, qtype, edns));
            let fast = mesh_answer_fast(&q, &entry, 30).expect("plain case");
            let built = mesh_answer(&q, &entry, false, 30, None);
            assert_eq!(Message::from_vec(&fast).unwrap(), Message::from_vec(&built).unwrap(), "{name} {qtype}");
        }
        let q = parse(&query_packet("reviews.", RecordType::TXT, false));
        assert!(mesh_answer_fast(&q, &entry, 30).is_none(), "NODATA takes the general path");
    }

    #[test]
    fn large_answers_are_truncated_for_udp() {
        let q = parse(&query_packet("big.example.", RecordType::A, false));
        let entry = Entry {
            host: "big.example".into(),
            v4: (0..100).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
            v6: vec![],
        };
        let full = mesh_answer(&q, &entry, false, 30, None);
        assert!(full.len() > q.udp_limit());
        let cut = fit_udp(full.clone(), q.udp_limit());
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!((m.queries.len(), m.answers.len()), (1, 0));
        assert_eq!(fit_udp(full.clone(), 65_535), full);
    }

    #[test]
    fn tsig_records_are_refused_before_decoding() {
        let mut m = Message::from_vec(&query_packet("a.example.", RecordType::A, false)).unwrap();
        m.metadata.id = 1;
        let mut p = m.to_vec().unwrap();
        // One additional record: root name, type TSIG, class ANY, TTL 0, empty rdata.
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 0]);
        assert!(decode(&p).unwrap_err().contains("TSIG"));
        assert!(matches!(parse_query(&p), Parsed::Reply(_)), "FORMERR");
    }

    #[test]
    fn walking_stops_at_broken_messages() {
        assert_eq!(skip_name(&[3, b'a', b'b', b'c', 0], 0), Some(5));
        assert_eq!(skip_name(&[0xc0, 12], 0), Some(2));
        assert_eq!(skip_name(&[0xc0], 0), None);
        assert_eq!(skip_name(&[0x40, 0], 0), None);
        assert_eq!(skip_name(&[5, b'a'], 0), None);
        assert_eq!(ttl_offsets(&[0; 11]), None);
        let mut header = vec![0u8; 12];
        header[7] = 1; // one answer that is not there
        assert_eq!(ttl_offsets(&header), None);
    }
}
