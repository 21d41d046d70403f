//! Server cookies: `key id ‖ nonce ‖ AEAD(master key)(AEAD id ‖ 0 0 ‖ C2S ‖ S2C)`.
//! The two zero bytes make every cookie a multiple of 4 bytes long, so it fills its
//! extension field exactly and no padding can be mistaken for cookie.
//!
//! Master keys belong to rotation epochs (`unix time / rotation`); the epoch number is
//! the key id. A server keeps the keys of the current epoch, the next one (so hosts
//! whose clocks differ a little agree), and those of the retention window before it.
//!
//! Keys come either from the OS RNG, persisted by the daemon so a restart invalidates
//! no cookie, or, in fleet mode, from a shared secret by HKDF-SHA256 with the epoch in
//! the info, so any number of KE and NTP hosts open each other's cookies without
//! talking to each other.

use rand::CryptoRng;
use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::aead::{AeadAlgorithm, AeadKey, TAG_LEN};

/// Master keys are AES-SIV-CMAC-256 keys; cookie nonces are 16 bytes.
const MASTER: AeadAlgorithm = AeadAlgorithm::AesSivCmac256;
const NONCE_LEN: usize = 16;
/// A cookie's plaintext at most: AEAD id, two zero bytes, and two of the longest keys.
const MAX_PLAINTEXT_LEN: usize = 4 + 2 * 64;
/// Fleet secrets shorter than this are refused.
pub const MIN_FLEET_SECRET_LEN: usize = 32;
const FLEET_SALT: &[u8] = b"ntimed fleet cookie master keys v1";
/// Keys from epochs after the current one kept through a backwards clock jump.
const FUTURE_KEYS_KEPT: usize = 64;

/// The keys a cookie carries.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    pub c2s: AeadKey,
    pub s2c: AeadKey,
}

impl SessionKeys {
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.c2s.algorithm()
    }
}

/// How long keys live, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub period: u64,
    pub retention: u64,
}

impl Default for Rotation {
    /// Daily keys, kept for a week: a client that sleeps for days still re-keys only
    /// when its cookies are older than that.
    fn default() -> Self {
        Self {
            period: 86_400,
            retention: 7 * 86_400,
        }
    }
}

enum Source {
    Random,
    Fleet(Zeroizing<Vec<u8>>),
}

/// The master keys of one server or fleet.
pub struct CookieKeys {
    source: Source,
    rotation: Rotation,
    keys: BTreeMap<u32, AeadKey>,
    current: u32,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CookieKeys(current {}, epochs {:?}, redacted)",
            self.current,
            self.keys.keys()
        )
    }
}

impl CookieKeys {
    /// Random keys, starting from `persisted` (epoch, key) pairs; call `update` next.
    pub fn random(rotation: Rotation, persisted: Vec<(u32, AeadKey)>) -> Self {
        Self {
            source: Source::Random,
            rotation,
            keys: persisted.into_iter().collect(),
            current: 0,
        }
    }

    /// Keys derived from a fleet secret.
    pub fn fleet(rotation: Rotation, secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_FLEET_SECRET_LEN {
            return Err(format!(
                "fleet secret is {} bytes; at least {MIN_FLEET_SECRET_LEN} are needed",
                secret.len()
            ));
        }
        Ok(Self {
            source: Source::Fleet(Zeroizing::new(secret.to_vec())),
            rotation,
            keys: BTreeMap::new(),
            current: 0,
        })
    }

    /// How long these keys live: a new fleet secret keeps the same schedule.
    pub fn rotation(&self) -> Rotation {
        self.rotation
    }

    /// Moves to the epoch of `unix_seconds`: adds keys up to the next epoch, drops
    /// those past retention. Returns whether the key set changed (persist it then).
    pub fn update(&mut self, unix_seconds: u64, rng: &mut (impl CryptoRng + ?Sized)) -> bool {
        let period = self.rotation.period.max(1);
        let current = u32::try_from(unix_seconds / period).unwrap_or(u32::MAX);
        let kept = u32::try_from(self.rotation.retention / period).unwrap_or(u32::MAX);
        let oldest = current.saturating_sub(kept);
        let before: Vec<u32> = self.keys.keys().copied().collect();
        // Keys newer than the clock says are kept: a clock that boots in 1970 or jumps
        // back must not throw away every cookie the server has issued. At most a
        // window's worth of them, though.
        self.keys.retain(|&epoch, _| epoch >= oldest);
        let window = usize::try_from(kept)
            .unwrap_or(usize::MAX)
            .saturating_add(2);
        while self.keys.len() > window.saturating_add(FUTURE_KEYS_KEPT) {
            self.keys.pop_last();
        }
        let wanted = match self.source {
            // Every epoch in the window can be derived.
            Source::Fleet(_) => oldest..=current.saturating_add(1),
            // Old random keys that were lost cannot come back.
            Source::Random => current..=current.saturating_add(1),
        };
        for epoch in wanted {
            if !self.keys.contains_key(&epoch)
                && let Some(key) = self.make_key(epoch, rng)
            {
                self.keys.insert(epoch, key);
            }
        }
        self.current = current;
        before != self.keys.keys().copied().collect::<Vec<_>>()
    }

    fn make_key(&self, epoch: u32, rng: &mut (impl CryptoRng + ?Sized)) -> Option<AeadKey> {
        let mut bytes = Zeroizing::new(vec![0u8; MASTER.key_len()]);
        match &self.source {
            Source::Random => rng.fill_bytes(&mut bytes[..]),
            Source::Fleet(secret) => {
                let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(FLEET_SALT), secret);
                let mut info = epoch.to_be_bytes().to_vec();
                info.extend_from_slice(&self.rotation.period.to_be_bytes());
                hk.expand(&info, &mut bytes).ok()?;
            }
        }
        AeadKey::new(MASTER, &bytes)
    }

    /// The epoch whose master key seals new cookies (it names the key in each cookie;
    /// the key itself never leaves this type).
    pub fn current_epoch(&self) -> u32 {
        self.current
    }

    /// The random keys to persist; nothing in fleet mode.
    pub fn persistable(&self) -> Vec<(u32, &AeadKey)> {
        match self.source {
            Source::Random => self.keys.iter().map(|(&e, k)| (e, k)).collect(),
            Source::Fleet(_) => Vec::new(),
        }
    }

    /// A new cookie holding `keys`, under the current epoch's master key.
    pub fn seal(&self, keys: &SessionKeys, rng: &mut (impl CryptoRng + ?Sized)) -> Option<Vec<u8>> {
        let mut cookie = Vec::with_capacity(cookie_len(keys.algorithm()));
        self.seal_into(keys, rng, &mut cookie)?;
        Some(cookie)
    }

    /// Appends a new cookie holding `keys` to `out`, sealed in place: an NTS reply
    /// writes its cookies straight into the fields it encrypts. On failure `out` is
    /// left as it was.
    pub fn seal_into(
        &self,
        keys: &SessionKeys,
        rng: &mut (impl CryptoRng + ?Sized),
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let master = self.keys.get(&self.current)?;
        let mut plaintext = Zeroizing::new([0u8; MAX_PLAINTEXT_LEN]);
        let mut len = 0;
        let id = keys.algorithm().id().to_be_bytes();
        for part in [&id[..], &[0, 0], keys.c2s.bytes(), keys.s2c.bytes()] {
            plaintext
                .get_mut(len..len + part.len())?
                .copy_from_slice(part);
            len += part.len();
        }
        let plaintext = plaintext.get(..len)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let epoch = self.current.to_be_bytes();
        let start = out.len();
        out.extend_from_slice(&epoch);
        out.extend_from_slice(&nonce);
        out.resize(start + cookie_len(keys.algorithm()), 0);
        let sealed = out
            .get_mut(start + 4 + NONCE_LEN..)
            .and_then(|sealed| master.seal_into(&nonce, plaintext, &epoch, sealed));
        if sealed.is_none() {
            out.truncate(start);
        }
        sealed
    }

    /// The keys in a cookie, if it is one of ours, intact and unexpired.
    pub fn open(&self, cookie: &[u8]) -> Option<SessionKeys> {
        let (id, rest) = cookie.split_first_chunk::<4>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let master = self.keys.get(&u32::from_be_bytes(*id))?;
        let mut opened = Zeroizing::new([0u8; MAX_PLAINTEXT_LEN]);
        let plain = opened.get_mut(..sealed.len().checked_sub(TAG_LEN)?)?;
        master.open_into(nonce, sealed, id, plain)?;
        let ([a, b, 0, 0], keys) = plain.split_first_chunk::<4>()? else {
            return None;
        };
        let aead = AeadAlgorithm::from_id(u16::from_be_bytes([*a, *b]))?;
        if keys.len() != 2 * aead.key_len() {
            return None;
        }
        let (c2s, s2c) = keys.split_at(aead.key_len());
        Some(SessionKeys {
            c2s: AeadKey::new(aead, c2s)?,
            s2c: AeadKey::new(aead, s2c)?,
        })
    }
}

/// The length of a cookie carrying keys of `algorithm`.
pub fn cookie_len(algorithm: AeadAlgorithm) -> usize {
    4 + NONCE_LEN + TAG_LEN + 4 + 2 * algorithm.key_len()
}

/// The text form of persisted keys: one `epoch hex` line each. Sized up front and
/// written in place, so no unwiped copy of a key is left in freed memory.
pub fn encode_persisted(keys: &[(u32, &AeadKey)]) -> Zeroizing<String> {
    use std::fmt::Write;
    let line_len = 11 + 2 * MASTER.key_len() + 1;
    let mut out = Zeroizing::new(String::with_capacity(keys.len() * line_len));
    for (epoch, key) in keys {
        let _ = write!(out, "{epoch} ");
        for b in key.bytes() {
            let _ = write!(out, "{b:02x}");
        }
        out.push('\n');
    }
    out
}

/// Parses `encode_persisted`'s output; errors name the line.
pub fn decode_persisted(text: &str) -> Result<Vec<(u32, AeadKey)>, String> {
    let mut keys = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fail = |what: &str| format!("line {}: {what}", i + 1);
        let (epoch, hex) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| fail("expected `epoch key`"))?;
        let epoch = epoch.parse().map_err(|_| fail("bad epoch"))?;
        let bytes = Zeroizing::new(crate::auth::keys::decode_hex(hex).map_err(|e| fail(&e))?);
        keys.push((
            epoch,
            AeadKey::new(MASTER, &bytes).ok_or_else(|| fail("wrong key length"))?,
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 20_000 * DAY + 5;

    fn session(alg: AeadAlgorithm) -> SessionKeys {
        SessionKeys {
            c2s: AeadKey::new(alg, &vec![1; alg.key_len()]).unwrap(),
            s2c: AeadKey::new(alg, &vec![2; alg.key_len()]).unwrap(),
        }
    }

    fn random() -> CookieKeys {
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(NOW, &mut rand::rng());
        keys
    }

    #[test]
    fn cookies_have_the_length_they_announce_and_fill_their_field() {
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(1_700_000_000, &mut rand::rng());
        for alg in AeadAlgorithm::PREFERENCE {
            let cookie = keys.seal(&session(alg), &mut rand::rng()).unwrap();
            assert_eq!(cookie.len(), cookie_len(alg), "{alg:?}");
            assert_eq!(cookie.len() % 4, 0, "{alg:?}: no padding after a cookie");
            assert!(cookie.len() > 16);
        }
    }

    #[test]
    fn cookies_open_to_the_keys_sealed_in_them() {
        let keys = random();
        for alg in AeadAlgorithm::PREFERENCE {
            let cookie = keys.seal(&session(alg), &mut rand::rng()).unwrap();
            assert_eq!(cookie.len(), 4 + 16 + 4 + 2 * alg.key_len() + 16);
            assert_eq!(cookie.len() % 4, 0);
            let opened = keys.open(&cookie).unwrap();
            assert_eq!(opened.algorithm(), alg);
            assert_eq!(opened.c2s.bytes(), session(alg).c2s.bytes());
            assert_eq!(opened.s2c.bytes(), session(alg).s2c.bytes());
        }
    }

    /// ADVERSARIAL 12: unknown key id, corrupted cookies and foreign cookies fail.
    #[test]
    fn tampered_or_foreign_cookies_do_not_open() {
        let keys = random();
        let cookie = keys
            .seal(&session(AeadAlgorithm::AesSivCmac256), &mut rand::rng())
            .unwrap();
        for i in 0..cookie.len() {
            let mut bad = cookie.clone();
            bad[i] ^= 0x10;
            assert!(keys.open(&bad).is_none(), "byte {i}");
        }
        assert!(keys.open(&cookie[..cookie.len() - 1]).is_none());
        assert!(keys.open(&[]).is_none());
        // Longer than any cookie this server makes: refused before any decryption.
        let mut oversized = cookie[..20].to_vec();
        oversized.resize(20 + TAG_LEN + MAX_PLAINTEXT_LEN + 1, 7);
        assert!(keys.open(&oversized).is_none());
        assert!(random().open(&cookie).is_none(), "another server's keys");
    }

    #[test]
    fn cookies_survive_rotation_until_retention_ends() {
        let mut keys = random();
        let cookie = keys
            .seal(&session(AeadAlgorithm::AesSivCmac256), &mut rand::rng())
            .unwrap();
        assert!(
            keys.update(NOW + DAY, &mut rand::rng()),
            "a new epoch adds a key"
        );
        assert!(keys.open(&cookie).is_some());
        keys.update(NOW + 7 * DAY, &mut rand::rng());
        assert!(
            keys.open(&cookie).is_some(),
            "kept for the retention window"
        );
        keys.update(NOW + 8 * DAY, &mut rand::rng());
        assert!(keys.open(&cookie).is_none(), "then dropped");
    }

    #[test]
    fn a_clock_that_jumps_back_keeps_the_keys() {
        let mut keys = random();
        let cookie = keys
            .seal(&session(AeadAlgorithm::AesSivCmac256), &mut rand::rng())
            .unwrap();
        keys.update(5, &mut rand::rng()); // 1970
        keys.update(NOW + 60, &mut rand::rng()); // fixed again
        assert!(keys.open(&cookie).is_some());
    }

    #[test]
    fn persisted_keys_reopen_cookies_after_a_restart() {
        let keys = random();
        let cookie = keys
            .seal(&session(AeadAlgorithm::AesGcmSiv128), &mut rand::rng())
            .unwrap();
        let text = encode_persisted(&keys.persistable());
        let mut restarted =
            CookieKeys::random(Rotation::default(), decode_persisted(&text).unwrap());
        restarted.update(NOW + 60, &mut rand::rng());
        assert!(restarted.open(&cookie).is_some());
        assert!(decode_persisted("1 abcd\n").unwrap_err().contains("line 1"));
        assert!(decode_persisted("x 00\n").is_err());
    }

    #[test]
    fn fleet_hosts_open_each_others_cookies() {
        let secret = [9u8; 32];
        let mut ke_host = CookieKeys::fleet(Rotation::default(), &secret).unwrap();
        let mut ntp_host = CookieKeys::fleet(Rotation::default(), &secret).unwrap();
        ke_host.update(NOW, &mut rand::rng());
        ntp_host.update(NOW + DAY - 10, &mut rand::rng()); // a day's skew is within the window
        let cookie = ke_host
            .seal(&session(AeadAlgorithm::AesSivCmac256), &mut rand::rng())
            .unwrap();
        assert!(ntp_host.open(&cookie).is_some());
        assert!(ke_host.persistable().is_empty(), "nothing to persist");
        let mut other = CookieKeys::fleet(Rotation::default(), &[8u8; 32]).unwrap();
        other.update(NOW, &mut rand::rng());
        assert!(other.open(&cookie).is_none());
        assert!(CookieKeys::fleet(Rotation::default(), &[1; 16]).is_err());
    }
}
