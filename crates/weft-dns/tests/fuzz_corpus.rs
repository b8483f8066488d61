//! Replays the `dns_packet` fuzz corpus through the fuzz target's body, so every input the
//! fuzzer found interesting stays a regression test without a fuzzer in CI. The seeds are
//! written by `cargo test -p weft-dns --test fuzz_corpus -- --ignored write_fuzz_seeds`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dns_packet")
}

#[test]
fn replay_dns_packet_corpus() {
    let dir = corpus();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut visited = 0usize;
    for entry in entries {
        let path = entry.expect("read corpus entry").path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| weft_dns::fuzzing::packet(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
        visited += 1;
    }
    assert!(visited >= 10, "too few corpus files in {}", dir.display());
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        m.set_edns(Edns::new());
    }
    m
}

fn response(name: &str, rcode: ResponseCode) -> Message {
    let mut m = Message::response(0x4242, OpCode::Query);
    m.metadata.response_code = rcode;
    m.queries.push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m
}

/// Writes the seed corpus: questions of every kind the server distinguishes, and upstream
/// answers of every kind the cache distinguishes.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = corpus();
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, qtype, edns, file) in [
        ("reviews.", RecordType::A, false, "q-short"),
        ("reviews.shop.svc.cluster.local.", RecordType::A, true, "q-fqdn-edns"),
        ("reviews.corp.example.", RecordType::A, false, "q-search"),
        ("Reviews.Shop.", RecordType::AAAA, false, "q-aaaa"),
        ("reviews.shop.svc.", RecordType::ANY, true, "q-any"),
        ("reviews.corp.example.", RecordType::CNAME, false, "q-cname"),
        ("nope.shop.svc.cluster.local.", RecordType::A, false, "q-nx"),
        ("www.example.com.", RecordType::A, true, "q-forward"),
        ("reviews.", RecordType::TXT, false, "q-txt"),
    ] {
        seeds.push((file, query(name, qtype, edns).to_vec().unwrap()));
    }
    let mut chaos = query("version.bind.", RecordType::TXT, false);
    chaos.queries[0].query_class = hickory_proto::rr::DNSClass::CH;
    seeds.push(("q-chaos", chaos.to_vec().unwrap()));
    let www = Name::from_ascii("www.example.com.").unwrap();
    let mut pos = response("www.example.com.", ResponseCode::NoError);
    pos.answers.push(Record::from_rdata(
        www.clone(),
        300,
        RData::CNAME(CNAME(Name::from_ascii("edge.example.net.").unwrap())),
    ));
    pos.answers.push(Record::from_rdata(
        Name::from_ascii("edge.example.net.").unwrap(),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
    ));
    let mut e = Edns::new();
    e.set_max_payload(4096);
    pos.set_edns(e);
    seeds.push(("r-positive", pos.to_vec().unwrap()));
    let zone = Name::from_ascii("example.com.").unwrap();
    let mut nx = response("www.example.com.", ResponseCode::NXDomain);
    nx.authorities.push(Record::from_rdata(
        zone.clone(),
        900,
        RData::SOA(SOA::new(zone.clone(), zone, 1, 1, 1, 1, 30)),
    ));
    seeds.push(("r-nxdomain", nx.to_vec().unwrap()));
    seeds.push(("r-servfail", response("www.example.com.", ResponseCode::ServFail).to_vec().unwrap()));
    let mut tc = response("www.example.com.", ResponseCode::NoError);
    tc.metadata.truncation = true;
    seeds.push(("r-truncated", tc.to_vec().unwrap()));
    // A question whose name is a compression pointer, and broken framings.
    seeds.push(("q-pointer", vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]));
    seeds.push(("q-short-header", vec![0x42, 0x42, 1, 0, 0, 1]));
    seeds.push(("q-two-questions", {
        let mut m = query("a.example.", RecordType::A, false);
        m.queries.push(Query::query(Name::from_ascii("b.example.").unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }));
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
