//! The relay's hot path in the protocol crate: walking a buffer of backend
//! frames (a `pgbench -S` reply and a large result), and parsing startup packets.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgwake_protocol::{startup, Scanner};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// RowDescription, one DataRow, CommandComplete, ReadyForQuery: what a
/// `SELECT abalance FROM pgbench_accounts WHERE aid = $1` returns.
fn select_reply() -> Vec<u8> {
    let mut v = frame(
        b'T',
        &[
            0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
        ],
    );
    v.extend(frame(b'D', &[0, 1, 0, 0, 0, 1, b'0']));
    v.extend(frame(b'C', b"SELECT 1\0"));
    v.extend(frame(b'Z', b"I"));
    v
}

fn scan_all(scanner: &mut Scanner, buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut seen = 0;
    while let Some((_, next)) = scanner
        .next(buf, pos, |t| t == b'Z' || t == b'S' || t == b'E')
        .unwrap()
    {
        pos = next;
        seen += 1;
    }
    seen
}

fn benches(c: &mut Criterion) {
    let reply = select_reply();
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(reply.len() as u64));
    g.bench_function("select_reply", |b| {
        let mut s = Scanner::new(1 << 30);
        b.iter(|| scan_all(&mut s, std::hint::black_box(&reply)))
    });
    let mut big = Vec::new();
    for i in 0..1000u32 {
        big.extend(frame(b'D', format!("{i:0>100}").as_bytes()));
    }
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("thousand_data_rows", |b| {
        let mut s = Scanner::new(1 << 30);
        b.iter(|| scan_all(&mut s, std::hint::black_box(&big)))
    });
    g.finish();

    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "app"),
        ("database", "app"),
        ("application_name", "pgbench"),
        ("client_encoding", "UTF8"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = u32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.extend(body);
    c.bench_function("startup_parse", |b| {
        b.iter(|| startup::parse(std::hint::black_box(&packet)).unwrap())
    });
}

criterion_group!(frames, benches);
criterion_main!(frames);
