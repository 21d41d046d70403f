//! `ntimed keygen`: a symmetric key file of random secrets, in ntp.keys (ntpd, NTPsec)
//! or chrony format, every key of a type all three implementations accept.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use zeroize::Zeroizing;

use crate::auth::{KeyFileFormat, KeyType};

/// The types `ntimed keygen` writes. AES128 (RFC 8573 AES-CMAC) is the default: ntimed,
/// chrony and NTPsec all accept it and compute the same MAC. NTPsec truncates MACs
/// longer than 20 bytes, so its SHA256 MACs are not chrony's or ntimed's.
pub const TYPES: [KeyType; 5] = [
    KeyType::Aes128Cmac,
    KeyType::Aes256Cmac,
    KeyType::Sha256,
    KeyType::Sha1,
    KeyType::Md5,
];

/// Largest key id: ntp.keys ids are 1 to 65535 (ntp.keys(5)); chrony's go higher, but
/// a file kept within this range can be rewritten for either.
pub const MAX_ID: u32 = 65_535;

/// Most keys in one file.
pub const MAX_COUNT: u32 = 1000;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct KeygenOptions {
    pub key_type: KeyType,
    pub count: u32,
    /// [`KeyFileFormat::Ntp`] or [`KeyFileFormat::Chrony`].
    pub format: KeyFileFormat,
    pub id_start: u32,
}

/// `name` (any case) as one of [`TYPES`].
pub fn parse_type(name: &str) -> Result<KeyType, String> {
    TYPES
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<_> = TYPES.iter().map(|t| t.name()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

/// The type's name in ntp.keys: NTPsec takes OpenSSL's names and rejects `AES128`.
fn ntp_keys_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Aes128Cmac => "AES-128",
        KeyType::Aes256Cmac => "AES-256",
        other => other.name(),
    }
}

/// Secret bytes: the digest length (at most NTPsec's 32), or the cipher's key length.
fn secret_len(key_type: KeyType) -> usize {
    match key_type {
        KeyType::Md5 | KeyType::Aes128Cmac => 16,
        KeyType::Sha1 => 20,
        KeyType::Sha256 | KeyType::Sha384 | KeyType::Sha512 | KeyType::Aes256Cmac => 32,
    }
}

/// Longest line written: id, type, `HEX:` and 64 hex digits, with spaces.
const MAX_LINE: usize = 100;

/// The key file's text: a comment line, then one key per line with its secret in hex
/// (`ID TYPE HEX` for ntp.keys, where more than 20 characters mean hex; `ID TYPE
/// HEX:HEX` for chrony). Secrets come from `rng`; every copy of them is wiped.
pub fn key_file(
    options: KeygenOptions,
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Result<Zeroizing<String>, String> {
    let KeygenOptions {
        key_type,
        count,
        format,
        id_start,
    } = options;
    if !TYPES.contains(&key_type) {
        return Err(format!(
            "ntimed keygen does not write {} keys",
            key_type.name()
        ));
    }
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(format!("--count must be 1 to {MAX_COUNT}"));
    }
    let last = id_start
        .checked_add(count - 1)
        .filter(|&last| last <= MAX_ID);
    let Some(last) = last.filter(|_| id_start >= 1) else {
        return Err(format!(
            "key ids {id_start} to {} do not fit in 1 to {MAX_ID}",
            u64::from(id_start) + u64::from(count) - 1
        ));
    };
    let (type_name, hex_prefix, format_name) = match format {
        KeyFileFormat::Ntp => (ntp_keys_name(key_type), "", "ntp.keys"),
        KeyFileFormat::Chrony => (key_type.name(), "HEX:", "chrony keyfile"),
        KeyFileFormat::Auto => return Err("say --format ntp or --format chrony".into()),
    };
    let ids = if count == 1 {
        format!("key {id_start}")
    } else {
        format!("keys {id_start} to {last}")
    };
    let header = format!(
        "# {} {ids} ({format_name} format), made by ntimed keygen\n",
        key_type.name()
    );
    // Sized up front: a growing String would free copies of the secrets unwiped.
    let mut text = Zeroizing::new(String::with_capacity(
        header.len() + MAX_LINE * count as usize,
    ));
    text.push_str(&header);
    let mut secret = Zeroizing::new(vec![0u8; secret_len(key_type)]);
    for id in id_start..=last {
        rng.fill_bytes(&mut secret[..]);
        let _ = write!(text, "{id} {type_name} {hex_prefix}");
        for byte in secret.iter() {
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
    }
    Ok(text)
}

/// Writes `text` to a new file at `path`, mode 0600; an existing file is never
/// overwritten.
pub fn write_new_file(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!(
                    "{}: exists; ntimed keygen does not overwrite key files",
                    path.display()
                )
            }
            _ => format!("{}: cannot create: {e}", path.display()),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyStore;
    use rand::SeedableRng;

    fn generate(key_type: KeyType, format: KeyFileFormat, count: u32, id_start: u32) -> String {
        let options = KeygenOptions {
            key_type,
            count,
            format,
            id_start,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        key_file(options, &mut rng).unwrap().to_string()
    }

    #[test]
    fn every_type_reads_back_in_both_formats() {
        for key_type in TYPES {
            for format in [KeyFileFormat::Ntp, KeyFileFormat::Chrony] {
                let text = generate(key_type, format, 3, 10);
                // Read as the format says, and as detected.
                for read_as in [format, KeyFileFormat::Auto] {
                    let store = KeyStore::parse("k", &text, read_as).unwrap();
                    assert_eq!(store.len(), 3, "{text}");
                    for id in 10..=12 {
                        let key = store.get(id).unwrap();
                        assert_eq!(key.key_type(), key_type);
                        assert_eq!(key.secret().len(), secret_len(key_type));
                    }
                }
            }
        }
    }

    #[test]
    fn names_are_each_formats_own() {
        let ntp = generate(KeyType::Aes128Cmac, KeyFileFormat::Ntp, 1, 1);
        let line = ntp.lines().nth(1).unwrap();
        assert!(
            line.starts_with("1 AES-128 ") && line.len() == 10 + 32,
            "{line}"
        );
        let chrony = generate(KeyType::Aes128Cmac, KeyFileFormat::Chrony, 1, 1);
        assert!(chrony.lines().nth(1).unwrap().starts_with("1 AES128 HEX:"));
        assert_eq!(parse_type("aes256").unwrap(), KeyType::Aes256Cmac);
        assert!(parse_type("SHA512").unwrap_err().contains("AES128, AES256"));
    }

    #[test]
    fn secrets_differ_and_ranges_are_enforced() {
        let text = generate(KeyType::Sha256, KeyFileFormat::Chrony, 2, 1);
        let secrets: Vec<_> = text.lines().skip(1).map(|l| &l[l.len() - 64..]).collect();
        assert_ne!(secrets[0], secrets[1]);
        let mut rng = rand::rng();
        let options = |count, id_start| KeygenOptions {
            key_type: KeyType::Aes128Cmac,
            count,
            format: KeyFileFormat::Ntp,
            id_start,
        };
        assert!(key_file(options(2, 65_534), &mut rng).is_ok());
        for (count, id_start) in [(3, 65_534), (0, 1), (1001, 1), (1, 0), (2, u32::MAX)] {
            assert!(key_file(options(count, id_start), &mut rng).is_err());
        }
    }

    #[test]
    fn an_existing_file_is_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.keys");
        write_new_file(&path, "1 AES-128 00\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_new_file(&path, "other").unwrap_err();
        assert!(err.contains("does not overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1 AES-128 00\n");
    }
}
