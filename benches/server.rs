//! Cost of answering one request in `proto::server` (parse, authenticate, build, sign),
//! without sockets: `cargo bench --bench server`. Prints ns per request and the
//! single-core request rate that implies.

use std::hint::black_box;
use std::time::Instant;

use ntimed::auth::{KeyFileFormat, KeyStore, mac};
use ntimed::proto::server::{Server, ServerOptions, SyncState};
use ntimed::wire::NtpTimestamp;

const ROUNDS: u32 = 1_000_000;

fn main() {
    let keys = KeyStore::parse(
        "bench",
        "1 SHA256 HEX:fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e\n\
         2 AES128 HEX:fa4efa4efa4efa4efa4efa4efa4efa4e\n\
         3 SHA1 HEX:fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e\n\
         4 MD5 ASCII:notsecret\n",
        KeyFileFormat::Chrony,
    )
    .expect("bench keys");
    let server = Server::new(keys.clone(), ServerOptions::default());
    let now = NtpTimestamp::from_bits(0xeb00_0000_0000_0000);
    let state = SyncState::local_reference(1, now, -20);

    let mut plain = vec![0x23u8];
    plain.resize(48, 0);
    plain[40..48].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
    let mut requests = vec![("plain", plain.clone())];
    for (name, id) in [("SHA1", 3), ("SHA256", 1), ("AES128-CMAC", 2), ("MD5", 4)] {
        let mut keyed = plain.clone();
        mac::append_mac(keys.get(id).expect("key"), &mut keyed);
        requests.push((name, keyed));
    }

    println!(
        "{:<12} {:>10} {:>16}",
        "request", "ns/request", "requests/s/core"
    );
    let mut reply = Vec::with_capacity(128);
    for (name, request) in &requests {
        for _ in 0..ROUNDS / 10 {
            let _ = server.handle_request(request, now, &state, || now, &mut reply);
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let result = server.handle_request(black_box(request), now, &state, || now, &mut reply);
            black_box((&result, &reply));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        println!("{name:<12} {ns:>10.0} {:>16.0}", 1e9 / ns);
    }
}
