//! Envelope encode/decode throughput per codec on realistic session JSON.
//!
//! `cargo bench --bench codec` (add `-- --quick` for a fast pass). Throughput is the original
//! (uncompressed) size, so MB/s figures compare codecs by the work a client's value represents.
//! Absolute numbers vary between machines; compare codecs and sizes within one run.

#[path = "../tests/common/agent_data.rs"]
#[allow(dead_code)]
mod agent_data;

use std::hint::black_box;

use agent_data::{Checkpoints, agent_session_json};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statecar::state::codec::{Codec, chunked};
use statecar::state::envelope::{self, Decoded};

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (16 * 1024, "16KiB"), (256 * 1024, "256KiB")];
const CODECS: [Codec; 4] = [Codec::None, Codec::Lz4, Codec::Zlib, Codec::Zstd];
const MAX_DECODED: usize = 64 << 20;

fn print_ratios() {
    eprintln!("compression ratio (original / stored, header included) on sample session JSON:");
    for (size, label) in SIZES {
        let value = agent_session_json(1, size);
        let cells: Vec<String> = CODECS[1..]
            .iter()
            .map(|&c| {
                let stored = envelope::encode(&value, c, 0, 0, 1);
                format!(
                    "{} {:.2}x",
                    c.name(),
                    value.len() as f64 / stored.len() as f64
                )
            })
            .collect();
        eprintln!("  {label:>6}: {}", cells.join("  "));
    }
}

fn bench(c: &mut Criterion) {
    print_ratios();

    let mut encode = c.benchmark_group("encode");
    for (size, label) in SIZES {
        let value = agent_session_json(1, size);
        encode.throughput(Throughput::Bytes(size as u64));
        for codec in CODECS {
            encode.bench_with_input(BenchmarkId::new(codec.name(), label), &value, |b, v| {
                b.iter(|| envelope::encode(black_box(v), codec, 0, 1_700_000_000_000, 1));
            });
        }
    }
    encode.finish();

    let mut decode = c.benchmark_group("decode");
    for (size, label) in SIZES {
        let value = agent_session_json(1, size);
        decode.throughput(Throughput::Bytes(size as u64));
        for codec in CODECS {
            let stored = envelope::encode(&value, codec, 0, 1_700_000_000_000, 1);
            // A bench that silently measured an error path would report nonsense.
            match envelope::decode(&stored, MAX_DECODED) {
                Ok(Decoded::State { value: v, .. }) if v == value => {}
                other => panic!("{codec} {label}: sample did not round-trip: {other:?}"),
            }
            decode.bench_with_input(BenchmarkId::new(codec.name(), label), &stored, |b, s| {
                b.iter(|| envelope::decode(black_box(s), MAX_DECODED));
            });
        }
    }
    decode.finish();

    // What a versioned write of an agent checkpoint compresses: the new value whole, and the
    // value it replaces as a delta against it (step 20 to 21 of a session, about 38 KB).
    let mut session = Checkpoints::new(1);
    session.advance(19);
    let old = session.checkpoint();
    session.step();
    let new = session.checkpoint();
    let mut g = c.benchmark_group("versioned_write");
    g.throughput(Throughput::Bytes(new.len() as u64));
    for level in [1, 3] {
        let enc = envelope::Encoding {
            codec: Codec::Zstd,
            level,
            min_size: 0,
            dict: None,
        };
        g.bench_function(BenchmarkId::new("zstd_whole", level), |b| {
            b.iter(|| envelope::encode_with(black_box(&new), &enc, 1, 2));
        });
        g.bench_function(BenchmarkId::new("zstd_delta", level), |b| {
            b.iter(|| envelope::encode_delta(black_box(&old), &new, 2, level, 1, 1));
        });
    }
    g.bench_function("lz4_whole", |b| {
        b.iter(|| envelope::encode(black_box(&new), Codec::Lz4, 0, 1, 2));
    });
    g.finish();

    // The same for an 8.5 MB checkpoint (benches/checkpoints.rs `big`): the value whole in two
    // to four frames, the value in chunks with the previous version's frames to copy (what a
    // versioned write of it does), and the replaced version as a delta of zstd's and as a
    // chunk map.
    let mut session = Checkpoints::new(77);
    while session.checkpoint().len() < 8 << 20 {
        session.advance(250);
    }
    let old = session.checkpoint();
    session.step();
    let new = session.checkpoint();
    let mut old_payload = Vec::new();
    let old_chunks = chunked::compress_chunked(&old, 1, None, &mut old_payload)
        .expect("the sample compresses")
        .chunks;
    let prev = chunked::Previous {
        value: &old,
        payload: &old_payload,
        chunks: &old_chunks,
    };
    let mut g = c.benchmark_group("versioned_write_8mb");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(new.len() as u64));
    let enc = envelope::Encoding {
        codec: Codec::Zstd,
        level: 1,
        min_size: 0,
        dict: None,
    };
    g.bench_function("zstd_whole", |b| {
        b.iter(|| envelope::encode_with(black_box(&new), &enc, 1, 2));
    });
    g.bench_function("zstd_chunks_reused", |b| {
        b.iter(|| envelope::encode_chunked(black_box(&new), 1, 7, Some(prev), 1, 2));
    });
    g.bench_function("zstd_delta", |b| {
        b.iter(|| envelope::encode_delta(black_box(&old), &new, 2, 1, 1, 1));
    });
    // What a versioned write makes of the replaced version instead: a map of the new value's
    // chunks (codec::chunk_delta).
    let mut new_payload = Vec::new();
    let new_outcome = chunked::compress_chunked(&new, 1, Some(prev), &mut new_payload)
        .expect("the sample compresses");
    let crcs = envelope::Crcs {
        value: crc32fast::hash(&old),
        base: crc32fast::hash(&new),
    };
    let head = envelope::DeltaHead {
        crcs,
        base_version: 2,
        timestamp_ms: 1,
        version: 1,
    };
    g.bench_function("chunk_map_delta", |b| {
        b.iter(|| {
            envelope::encode_chunk_delta(
                black_box(&old),
                &old_chunks,
                &new,
                &new_outcome.chunks,
                Some(&new_outcome.sources),
                1,
                head,
            )
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
