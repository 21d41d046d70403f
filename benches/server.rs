//! Cost of answering one request in `proto::server` (parse, authenticate, build, sign;
//! no sockets), by kind of request: `cargo bench --bench server`.

use std::hint::black_box;
use std::sync::{Arc, RwLock};

use criterion::{Criterion, criterion_group, criterion_main};
use ntimed::auth::nts::aead::{AeadAlgorithm, AeadKey};
use ntimed::auth::nts::cookie::{CookieKeys, Rotation, SessionKeys};
use ntimed::auth::nts::ntp::NtsSession;
use ntimed::auth::{KeyFileFormat, KeyStore, mac};
use ntimed::proto::server::{Server, ServerOptions, SyncState};
use ntimed::wire::{Header, NtpTimestamp};

fn requests(cookie_keys: &CookieKeys, keys: &KeyStore) -> Vec<(String, Vec<u8>)> {
    let mut plain = Vec::new();
    Header::client_request(6, NtpTimestamp::from_bits(0x0123_4567_89ab_cdef)).write(&mut plain);
    let mut out = vec![("plain".to_string(), plain.clone())];
    for (name, id) in [("SHA1", 3), ("SHA256", 1), ("AES128-CMAC", 2), ("MD5", 4)] {
        let mut keyed = plain.clone();
        mac::append_mac(keys.get(id).expect("key"), &mut keyed);
        out.push((format!("key {name}"), keyed));
    }
    for alg in [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesGcmSiv128] {
        let session_keys = SessionKeys {
            c2s: AeadKey::new(alg, &vec![1; alg.key_len()]).expect("key"),
            s2c: AeadKey::new(alg, &vec![2; alg.key_len()]).expect("key"),
        };
        // A client whose jar is full asks for one cookie, the usual case.
        let cookies = (0..8)
            .map(|_| {
                cookie_keys
                    .seal(&session_keys, &mut rand::rng())
                    .expect("seal")
            })
            .collect();
        let mut session = NtsSession::new(session_keys, cookies);
        let mut nts = plain.clone();
        session
            .write_request_fields(&mut rand::rng(), &mut nts)
            .expect("request");
        out.push((format!("NTS {}", alg.name()), nts));
    }
    out
}

fn bench(c: &mut Criterion) {
    let keys = KeyStore::parse(
        "bench",
        "1 SHA256 HEX:fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e\n\
         2 AES128 HEX:fa4efa4efa4efa4efa4efa4efa4efa4e\n\
         3 SHA1 HEX:fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e\n\
         4 MD5 ASCII:notsecret\n",
        KeyFileFormat::Chrony,
    )
    .expect("bench keys");
    let mut cookie_keys = CookieKeys::random(Rotation::default(), vec![]);
    cookie_keys.update(1_800_000_000, &mut rand::rng());
    let requests = requests(&cookie_keys, &keys);
    let server =
        Server::new(keys, ServerOptions::default()).with_nts(Arc::new(RwLock::new(cookie_keys)));
    let now = NtpTimestamp::from_bits(0xeb00_0000_0000_0000);
    let state = SyncState::local_reference(1, now, -20);
    let mut group = c.benchmark_group("server request");
    let mut reply = Vec::with_capacity(1024);
    for (name, request) in &requests {
        assert!(
            server
                .handle_request(request, now, &state, || now, &mut rand::rng(), &mut reply)
                .is_ok(),
            "{name}"
        );
        group.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let result = server.handle_request(
                    black_box(request),
                    now,
                    &state,
                    || now,
                    &mut rand::rng(),
                    &mut reply,
                );
                black_box((&result, &reply));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
