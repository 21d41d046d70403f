//! The symmetric keys every peer shares in these tests (fake secrets), written in
//! chrony's keyfile format and in NTPsec's ntp.keys format.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::files::{tempdir, write_secret_file};

/// Key ids shared by all peers in these tests.
pub const KEY_SHA256: u32 = 1;
pub const KEY_AES128: u32 = 2;
pub const KEY_SHA1: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Sha256,
    Aes128,
    Sha1,
}

impl KeyType {
    /// Type name in chrony's keyfile.
    pub fn chrony_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES128",
            KeyType::Sha1 => "SHA1",
        }
    }

    /// Type name in ntp.keys. NTPsec 1.2.2 accepts `AES`, `AES-128` and `aes-128` for
    /// AES-128-CMAC (ntpkeygen writes `AES`) and rejects `AES128` ("unknown auth type").
    pub fn ntp_keys_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES",
            KeyType::Sha1 => "SHA1",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TestKey {
    pub id: u32,
    pub kind: KeyType,
    /// Secret as hex. These are obviously fake test secrets.
    pub hex: &'static str,
}

/// The keys every peer shares in these tests.
pub const GOOD_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "000102030405060708090a0b0c0d0e0f",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "0123456789abcdef0123456789abcdef01234567",
    },
];

/// Same ids and types as [`GOOD_KEYS`], different secrets.
pub const WRONG_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "deadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
];

/// chrony keyfile: `ID TYPE HEX:<hex>`.
pub fn write_chrony_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} HEX:{}", k.id, k.kind.chrony_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// ntp.keys: `ID TYPE <hex>` (keys longer than 20 characters are hex for NTPsec).
pub fn write_ntp_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} {}", k.id, k.kind.ntp_keys_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// Keys other than SHA-256: NTPsec truncates digests longer than 20 bytes (its SHA256 MAC
/// is not chrony's), so ntp.keys files for NTPsec hold only SHA1 and AES keys.
pub fn ntpsec_compatible(keys: &[TestKey]) -> Vec<TestKey> {
    keys.iter()
        .copied()
        .filter(|k| k.kind != KeyType::Sha256)
        .collect()
}

/// The shared test keys in both formats, good and wrong, in a private tempdir.
pub struct TestKeys {
    /// chrony format, all three keys.
    pub chrony: PathBuf,
    /// chrony format, same ids/types, different secrets.
    pub chrony_wrong: PathBuf,
    /// ntp.keys format, SHA1 (3) and AES (2) only.
    pub ntp: PathBuf,
    /// ntp.keys format, same ids/types, different secrets.
    pub ntp_wrong: PathBuf,
    _dir: TempDir,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let dir = tempdir("keys");
        let p = |n: &str| dir.path().join(n);
        let keys = TestKeys {
            chrony: p("chrony.keys"),
            chrony_wrong: p("chrony-wrong.keys"),
            ntp: p("ntp.keys"),
            ntp_wrong: p("ntp-wrong.keys"),
            _dir: dir,
        };
        write_chrony_keys(&keys.chrony, &GOOD_KEYS);
        write_chrony_keys(&keys.chrony_wrong, &WRONG_KEYS);
        write_ntp_keys(&keys.ntp, &ntpsec_compatible(&GOOD_KEYS));
        write_ntp_keys(&keys.ntp_wrong, &ntpsec_compatible(&WRONG_KEYS));
        keys
    }
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}
