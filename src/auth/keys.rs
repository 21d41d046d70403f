//! The symmetric key store, read from the key files ntpd/NTPsec and chrony users
//! already have.
//!
//! * ntp.keys (ntpd, NTPsec): `keyid type key`; a key of more than 20 characters is hex,
//!   otherwise ASCII. Key ids 1..=65535.
//! * chrony keyfile: `id [type] [ASCII:|HEX:]key`; no type means MD5, no prefix means
//!   ASCII. Key ids 1..=2^32-1.
//!
//! A file is read as chrony's when any line has only two fields or a key starts with
//! `HEX:` or `ASCII:`; otherwise as ntp.keys. `[keys] format` overrides the guess.
//! The two readings differ only for unprefixed keys longer than 20 characters.
//!
//! Secrets are zeroized on drop, never printed (`Debug` shows id and type only), and
//! the file is refused if group or others may read or write it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

/// Key files are small; anything larger is refused before it is read into memory.
const MAX_FILE_LEN: u64 = 1 << 20;
/// Longest secret accepted (NTPsec's limit is 32 bytes).
const MAX_SECRET_LEN: usize = 64;
/// ntp.keys: up to this many characters a key is ASCII, beyond it hex.
const NTP_MAX_ASCII_LEN: usize = 20;

/// The MAC algorithms of RFC 5905 (digest of key ‖ packet) and RFC 8573 (AES-CMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Aes128Cmac,
    Aes256Cmac,
}

impl KeyType {
    /// The name chrony uses, which ntimed also prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
            Self::Aes128Cmac => "AES128",
            Self::Aes256Cmac => "AES256",
        }
    }

    /// Accepts the names of both formats, case-insensitively.
    fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "M" | "MD5" => Self::Md5,
            "SHA1" | "SHA-1" => Self::Sha1,
            "SHA256" | "SHA-256" => Self::Sha256,
            "SHA384" | "SHA-384" => Self::Sha384,
            "SHA512" | "SHA-512" => Self::Sha512,
            "AES" | "AES128" | "AES-128" | "AES128CMAC" | "AES-128-CMAC" => Self::Aes128Cmac,
            "AES256" | "AES-256" | "AES256CMAC" | "AES-256-CMAC" => Self::Aes256Cmac,
            _ => return None,
        })
    }

    /// The exact secret length a cipher-based MAC needs.
    fn required_secret_len(self) -> Option<usize> {
        match self {
            Self::Aes128Cmac => Some(16),
            Self::Aes256Cmac => Some(32),
            _ => None,
        }
    }
}

/// One key. The secret is zeroized on drop and never shown.
#[derive(Clone)]
pub struct SymmetricKey {
    id: u32,
    key_type: KeyType,
    secret: Zeroizing<Vec<u8>>,
}

impl SymmetricKey {
    /// Builds a key; the secret must be non-empty and, for AES, of the cipher's length.
    pub fn new(id: u32, key_type: KeyType, secret: Vec<u8>) -> Result<Self, String> {
        let secret = Zeroizing::new(secret);
        if id == 0 {
            return Err("key id 0 is reserved (it marks a crypto-NAK)".into());
        }
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(format!(
                "key must be 1 to {MAX_SECRET_LEN} bytes, not {}",
                secret.len()
            ));
        }
        if let Some(need) = key_type.required_secret_len()
            && secret.len() != need
        {
            return Err(format!(
                "{} needs a {need}-byte key ({} hex digits), not {} bytes",
                key_type.name(),
                need * 2,
                secret.len()
            ));
        }
        Ok(Self {
            id,
            key_type,
            secret,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SymmetricKey({} {}, secret redacted)",
            self.id,
            self.key_type.name()
        )
    }
}

/// Which key-file dialect to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFileFormat {
    #[default]
    Auto,
    /// ntpd / NTPsec `ntp.keys`.
    Ntp,
    /// chrony `keyfile`.
    Chrony,
}

/// A key file that could not be used, naming the file, the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct KeyFileError {
    pub file: String,
    pub line: Option<usize>,
    pub problem: String,
}

/// Keys by id.
#[derive(Clone, Default)]
pub struct KeyStore {
    keys: BTreeMap<u32, SymmetricKey>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.values()).finish()
    }
}

impl KeyStore {
    /// Reads a key file, refusing one that group or others can read or write.
    pub fn load(path: &Path, format: KeyFileFormat) -> Result<Self, KeyFileError> {
        let name = path.display().to_string();
        let bytes = read_private_file(path, MAX_FILE_LEN).map_err(|problem| KeyFileError {
            file: name.clone(),
            line: None,
            problem,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| KeyFileError {
            file: name.clone(),
            line: None,
            problem: "not UTF-8 text".into(),
        })?;
        Self::parse(&name, text, format)
    }

    /// Parses key-file text; `name` is used in errors.
    pub fn parse(name: &str, text: &str, format: KeyFileFormat) -> Result<Self, KeyFileError> {
        let format = match format {
            KeyFileFormat::Auto if text.lines().any(looks_like_chrony) => KeyFileFormat::Chrony,
            KeyFileFormat::Auto => KeyFileFormat::Ntp,
            explicit => explicit,
        };
        let mut store = Self::default();
        for (index, line) in text.lines().enumerate() {
            let fail = |problem: String| KeyFileError {
                file: name.to_string(),
                line: Some(index + 1),
                problem,
            };
            let fields: Vec<&str> = strip_comment(line, format)
                .map_err(fail)?
                .split_whitespace()
                .collect();
            if fields.is_empty() {
                continue;
            }
            let key = match format {
                KeyFileFormat::Chrony => parse_chrony_line(&fields),
                _ => parse_ntp_line(&fields),
            }
            .map_err(fail)?;
            let id = key.id;
            if store.keys.insert(id, key).is_some() {
                return Err(fail(format!("key {id} is defined twice")));
            }
        }
        if store.keys.is_empty() {
            return Err(KeyFileError {
                file: name.to_string(),
                line: None,
                problem: "no keys in file".into(),
            });
        }
        Ok(store)
    }

    pub fn get(&self, id: u32) -> Option<&SymmetricKey> {
        self.keys.get(&id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SymmetricKey> {
        self.keys.values()
    }
}

/// Reads a secret file: a regular file (opening a FIFO would block the start), at most
/// `max_len` bytes, that group and others can neither read nor write. The contents
/// are wiped when dropped.
pub fn read_private_file(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    read_private(file, max_len)
}

/// [`read_private_file`] for a file in a directory an unprivileged process can write
/// (read as root before privileges are dropped): never through a symbolic link, and a
/// FIFO or device planted there is not waited on.
pub fn read_private_file_no_link(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open (symbolic links are refused): {e}"))?;
    read_private(file, max_len)
}

fn read_private(file: std::fs::File, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    check_private(&meta)?;
    if meta.len() > max_len {
        return Err(format!("larger than {max_len} bytes"));
    }
    // Sized up front: a growing buffer would free copies of the secrets unwiped.
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(max_len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others read or write the keys; chmod 600 it"
        ));
    }
    Ok(())
}

/// chrony: a line starting with `#`, `!`, `;` or `%` is a comment, and keys may
/// contain `#`. ntp.keys: `#` starts a comment anywhere (NTPsec's ASCII keys cannot
/// hold one), but a `#` right after a key would silently shorten it, so that is an
/// error rather than a guess.
fn strip_comment(line: &str, format: KeyFileFormat) -> Result<&str, String> {
    if let Some('#' | '!' | ';' | '%') = line.trim_start().chars().next() {
        return Ok("");
    }
    if format == KeyFileFormat::Chrony {
        return Ok(line);
    }
    match line.split_once('#') {
        Some((before, _)) if before.ends_with(|c: char| !c.is_whitespace()) => {
            Err("`#` inside a key (ntp.keys keys cannot contain `#`; hex-encode it)".into())
        }
        Some((before, _)) => Ok(before),
        None => Ok(line),
    }
}

fn looks_like_chrony(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let comment = fields
        .first()
        .is_none_or(|f| f.starts_with(['#', '!', ';', '%']));
    !comment
        && (fields.len() == 2
            || fields
                .get(2)
                .is_some_and(|k| k.starts_with("HEX:") || k.starts_with("ASCII:")))
}

// Errors name fields by position, never by content: a mangled line may put part of a
// secret where an id or type was expected.

fn parse_id(field: &str, max: u32) -> Result<u32, String> {
    match field.parse::<u32>() {
        Ok(id) if (1..=max).contains(&id) => Ok(id),
        _ => Err(format!(
            "the key id (first field) is not a number from 1 to {max}"
        )),
    }
}

fn parse_type(field: &str) -> Result<KeyType, String> {
    KeyType::from_name(field).ok_or_else(|| {
        "the key type (second field) is not one of MD5, SHA1, SHA256, SHA384, SHA512, AES128, AES256"
            .to_string()
    })
}

/// `keyid type key` with keys of more than 20 characters read as hex.
fn parse_ntp_line(fields: &[&str]) -> Result<SymmetricKey, String> {
    let [id, key_type, key] = fields else {
        return Err(format!(
            "expected `keyid type key`, found {} fields",
            fields.len()
        ));
    };
    let id = parse_id(id, u32::from(u16::MAX))?;
    let key_type = parse_type(key_type)?;
    let secret = if key.len() > NTP_MAX_ASCII_LEN {
        decode_hex(key)?
    } else {
        ascii_secret(key)?
    };
    SymmetricKey::new(id, key_type, secret)
}

/// `id [type] [ASCII:|HEX:]key`.
fn parse_chrony_line(fields: &[&str]) -> Result<SymmetricKey, String> {
    let (id, key_type, key) = match fields {
        [id, key] => (id, KeyType::Md5, key),
        [id, key_type, key] => (id, parse_type(key_type)?, key),
        _ => {
            return Err(format!(
                "expected `id [type] [ASCII:|HEX:]key`, found {} fields",
                fields.len()
            ));
        }
    };
    let id = parse_id(id, u32::MAX)?;
    let secret = if let Some(hex) = key.strip_prefix("HEX:") {
        decode_hex(hex)?
    } else {
        ascii_secret(key.strip_prefix("ASCII:").unwrap_or(key))?
    };
    SymmetricKey::new(id, key_type, secret)
}

fn ascii_secret(key: &str) -> Result<Vec<u8>, String> {
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("ASCII key contains a non-printable character".into());
    }
    Ok(key.as_bytes().to_vec())
}

/// Decodes hex, saying what is wrong without echoing the (secret) text.
pub(crate) fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "hex key has an odd number of digits ({})",
            text.len()
        ));
    }
    let mut out = Vec::with_capacity(text.len() / 2);
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out.push((hi << 4 | lo) as u8),
            _ => {
                out.zeroize();
                return Err(format!(
                    "hex key has a non-hex digit near position {}",
                    2 * i
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KeyStore, KeyFileError> {
        KeyStore::parse("test.keys", text, KeyFileFormat::Auto)
    }

    #[test]
    fn reads_ntp_keys() {
        let store = parse(
            "# ntpkeygen output\n\
             1 MD5 abcdefghij  # short ASCII\n\
             2 SHA1 0102030405060708090a0b0c0d0e0f1011121314\n\
             3 AES 000102030405060708090a0b0c0d0e0f\n\
             4 M secret\n",
        )
        .unwrap();
        assert_eq!(store.len(), 4);
        assert_eq!(store.get(1).unwrap().secret(), b"abcdefghij");
        assert_eq!(store.get(2).unwrap().key_type(), KeyType::Sha1);
        assert_eq!(store.get(2).unwrap().secret().len(), 20);
        assert_eq!(store.get(3).unwrap().key_type(), KeyType::Aes128Cmac);
        assert_eq!(store.get(4).unwrap().key_type(), KeyType::Md5);
    }

    #[test]
    fn reads_chrony_keyfiles() {
        let store = parse(
            "1 HEX:0102\n\
             2 SHA256 HEX:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
             3 AES128 HEX:000102030405060708090a0b0c0d0e0f\n\
             4 SHA1 ASCII:passwordpasswordpassword\n\
             70000 SHA512 plainascii\n",
        )
        .unwrap();
        assert_eq!(store.get(1).unwrap().key_type(), KeyType::Md5);
        assert_eq!(store.get(1).unwrap().secret(), [1, 2]);
        assert_eq!(store.get(2).unwrap().secret().len(), 32);
        assert_eq!(store.get(4).unwrap().secret(), b"passwordpasswordpassword");
        assert_eq!(store.get(70000).unwrap().secret(), b"plainascii");
    }

    #[test]
    fn long_unprefixed_keys_follow_the_detected_format() {
        let text = "5 SHA1 0102030405060708090a0b0c0d0e0f1011121314\n";
        let ntp = KeyStore::parse("k", text, KeyFileFormat::Auto).unwrap();
        assert_eq!(ntp.get(5).unwrap().secret().len(), 20);
        let chrony = KeyStore::parse("k", text, KeyFileFormat::Chrony).unwrap();
        assert_eq!(chrony.get(5).unwrap().secret().len(), 40);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            ("1 MD5 ok\n\n2 SHA1 x y\n", 3, "expected `keyid type key`"),
            ("0 MD5 secret\n", 1, "key id (first field)"),
            ("70000 MD5 secret\n", 1, "from 1 to 65535"),
            ("1 BLAKE3 secret\n", 1, "key type (second field)"),
            ("1 MD5 abc#def\n", 1, "`#` inside a key"),
            (
                "1 SHA1 0102030405060708090a0b0c0d0e0f10111213zz\n",
                1,
                "non-hex digit",
            ),
            ("1 SHA1 HEX:abc\n", 1, "odd number of digits"),
            ("1 AES128 HEX:0011\n", 1, "AES128 needs a 16-byte key"),
            ("1 MD5 a\n1 SHA1 b\n", 2, "defined twice"),
        ];
        for (text, line, problem) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(err.problem.contains(problem), "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("test.keys:{line}: ")));
        }
        assert_eq!(parse("# nothing\n").unwrap_err().problem, "no keys in file");
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let store = parse("7 SHA256 HEX:5ec12e75ec12e75ec12e75ec12e75ec1\n").unwrap();
        let shown = format!("{store:?}");
        assert!(
            shown.contains("7 SHA256") && !shown.to_lowercase().contains("5ec1"),
            "{shown}"
        );
        // Mangled lines that put secret text where an id or type belongs.
        for line in [
            "1 SHA1 5ec12e75ec12e75ec12e75ec12e75ec12e7zz\n",
            "1 5ec12e7 password\n",
            "5ec12e7 SHA1 0011\n",
            "1 SHA1 5ec12e7 and more\n",
        ] {
            let err = parse(line).unwrap_err();
            assert!(!err.to_string().contains("5ec12e7"), "{err}");
        }
    }

    #[test]
    fn chrony_keys_may_contain_hash_signs() {
        let store = parse("1 SHA1 ASCII:x#longsecretpart\n# a comment\n").unwrap();
        assert_eq!(store.get(1).unwrap().secret(), b"x#longsecretpart");
        let ntp = parse("1 SHA1 shortkey   # a comment\n").unwrap();
        assert_eq!(ntp.get(1).unwrap().secret(), b"shortkey");
    }

    #[test]
    fn only_regular_utf8_files_are_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let err = KeyStore::load(dir.path(), KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("not a regular file"), "{err}");
        let path = dir.path().join("binary.keys");
        std::fs::write(&path, b"1 MD5 \xff\xfe\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyStore::load(&path, KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("UTF-8"), "{err}");
        let big = dir.path().join("big.keys");
        std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyStore::load(&big, KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("larger than"), "{err}");
    }

    #[test]
    fn group_or_world_access_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ntp.keys");
        std::fs::write(&path, "1 MD5 secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = KeyStore::load(&path, KeyFileFormat::Auto).unwrap_err();
            assert!(err.problem.contains("chmod 600"), "{mode:o}: {err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyStore::load(&path, KeyFileFormat::Auto).unwrap().len(), 1);
    }
}
