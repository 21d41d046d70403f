//! Key-file text to a [`KeyStore`], in either dialect: pure, no I/O, so it can be fuzzed
//! (`fuzz/fuzz_targets/key_file.rs`) and used on text from anywhere.

use zeroize::Zeroize;

use super::{KeyFileError, KeyFileFormat, KeyStore, KeyType, SymmetricKey};

/// ntp.keys: up to this many characters a key is ASCII, beyond it hex.
const NTP_MAX_ASCII_LEN: usize = 20;

impl KeyType {
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
}

impl KeyStore {
    /// Parses key-file text; `name` is used in errors.
    ///
    /// * ntp.keys (ntpd, NTPsec): `keyid type key`; a key of more than 20 characters is
    ///   hex, otherwise ASCII. Key ids 1..=65535.
    /// * chrony keyfile: `id [type] [ASCII:|HEX:]key`; no type means MD5, no prefix
    ///   means ASCII. Key ids 1..=2^32-1.
    ///
    /// A file is read as chrony's when any line has only two fields or a key starts with
    /// `HEX:` or `ASCII:`; otherwise as ntp.keys. `[keys] format` overrides the guess.
    /// The two readings differ only for unprefixed keys longer than 20 characters.
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
}
