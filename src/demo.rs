//! `ntimed demo`: the whole path on loopback, offline, with nothing to set up. It grows
//! as ntimed does; today: a keyed server and queries with and without keys.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::auth::{KeyFileFormat, KeyStore, SymmetricKey};
use crate::daemon::{query, serve};
use crate::proto::server::{Server, ServerOptions};

/// The example keys shipped in keys/ (public, fake secrets).
const EXAMPLE_KEYS: &str = include_str!("../keys/example.keys");

pub async fn run() -> Result<ExitCode, String> {
    let keys = KeyStore::parse("keys/example.keys", EXAMPLE_KEYS, KeyFileFormat::Auto)
        .map_err(|e| e.to_string())?;
    println!("ntimed demo: everything stays on loopback; this machine's clock is not touched.\n");

    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let running = serve::start(
        listen,
        Server::new(keys.clone(), ServerOptions::default()),
        serve::Reference::Local { stratum: 1 },
    )
    .await
    .map_err(|e| format!("cannot start the demo server: {e}"))?;
    let addr = running.local_addr;
    println!(
        "1. A server on {addr}: local stratum-1 reference, {} keys from keys/example.keys",
        keys.len()
    );

    let mut failures = 0;
    let key = |id| keys.get(id).cloned();
    let steps = [
        (
            "2. Plain NTP query (anyone on the path could forge this one)",
            None,
            true,
        ),
        (
            "3. Query signed with key 1 (SHA256, RFC 5905 MAC)",
            key(1),
            true,
        ),
        (
            "4. Query signed with key 2 (AES128-CMAC, RFC 8573)",
            key(2),
            true,
        ),
        (
            "5. Query with the right key id but the wrong secret: the server must stay silent",
            forged_key(),
            false,
        ),
    ];
    for (title, key, should_answer) in steps {
        println!("\n{title}");
        let options = query::QueryOptions {
            key,
            count: 1,
            timeout: Duration::from_millis(if should_answer { 2000 } else { 500 }),
            interval: Duration::ZERO,
        };
        for result in query::query(addr, options).await {
            match (result, should_answer) {
                (Ok(report), true) => println!("   {}", crate::cli::describe(&report)),
                (Err(_), false) => println!("   no reply accepted, as it should be"),
                (Ok(_), false) => {
                    failures += 1;
                    println!("   UNEXPECTED: a reply was accepted");
                }
                (Err(message), true) => {
                    failures += 1;
                    println!("   UNEXPECTED: {message}");
                }
            }
        }
    }

    let stats = &running.server.stats;
    println!(
        "\nServer counters: {} plain, {} keyed replies; {} failed authentication and got no reply.",
        stats.plain.load(Ordering::Relaxed),
        stats.keyed.load(Ordering::Relaxed),
        stats.auth_failed.load(Ordering::Relaxed),
    );
    Ok(if failures == 0 {
        println!(
            "\nDemo complete. Next: `ntimed query HOST` against any NTP server, or `ntimed run --config FILE`."
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Key 1's id and type with a secret the server does not know.
fn forged_key() -> Option<SymmetricKey> {
    SymmetricKey::new(1, crate::auth::KeyType::Sha256, vec![0x5a; 32]).ok()
}
