//! Private keys the host decrypts on a plugin's behalf (`ssh.check-login`).
//!
//! Decrypting a key runs its KDF in host code, outside the sandbox's budget, with costs
//! the key itself names: one key asking for scrypt N=2^40 or 2^32−1 bcrypt rounds would
//! abort the process or pin a core for good. So the container is parsed first (the same
//! way `russh` does), every KDF parameter is checked against the limits below, and only
//! then are the very bytes that were checked handed to `russh`'s decoder for that format.
//! Anything that would be decrypted by a scheme this module does not recognise is refused.

use base64::Engine as _;
use pkcs8::pkcs5::{self, pbes2};
use russh::keys::PrivateKey;

/// Largest key text accepted (an RSA-16384 PEM key is about 13 KiB).
pub const MAX_KEY_TEXT: usize = 64 * 1024;
/// OpenSSH `openssh-key-v1` bcrypt-pbkdf rounds (`ssh-keygen -a`). ssh-keygen's default
/// is 16 and guides suggest 100; 200 (twice that) takes about one second on an idle core.
pub const MAX_BCRYPT_ROUNDS: u32 = 200;
/// PKCS#8 PBES2 PBKDF2 iterations. OpenSSL writes 2048 and the RustCrypto default is
/// 600,000 (OWASP's figure for HMAC-SHA256); 1,000,000 takes well under a second.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;
/// PKCS#8 PBES2 scrypt memory, 128·r·N bytes. OpenSSL's `-scrypt` default (N=2^14,
/// r=8) needs 16 MiB.
pub const MAX_SCRYPT_MEMORY: u64 = 64 * 1024 * 1024;
/// PKCS#8 PBES2 scrypt work, N·r·p (16 × OpenSSL's default, well under a second).
pub const MAX_SCRYPT_WORK: u64 = 1 << 21;
/// PuTTY PPK v3 Argon2 memory in KiB (puttygen's default is 8192).
pub const MAX_ARGON2_MEMORY_KIB: u64 = 64 * 1024;
/// PuTTY PPK v3 Argon2 work, memory (KiB) × passes; it runs twice per decode (key, MAC).
pub const MAX_ARGON2_WORK_KIB: u64 = 512 * 1024;
/// PuTTY PPK v3 Argon2 lanes.
pub const MAX_ARGON2_LANES: u64 = 16;

/// Why a key cannot be used. `Refused`: the container or its cost is outside the limits
/// (nothing was decrypted); `Undecodable`: the decoder failed (wrong passphrase, damage).
/// Neither ever holds key material or the passphrase.
#[derive(Debug)]
pub(crate) enum KeyError {
    Refused(String),
    Undecodable(String),
}

/// Decodes `text` (OpenSSH, PEM PKCS#1/PKCS#8/SEC1, legacy encrypted PEM or PuTTY) after
/// checking its KDF cost. `field` names the key in messages.
pub(crate) fn decode_private_key(field: &str, text: &str, passphrase: Option<&str>) -> Result<PrivateKey, KeyError> {
    let refuse = |why: String| KeyError::Refused(format!("{field} {why}"));
    if text.len() > MAX_KEY_TEXT {
        return Err(refuse(format!("is longer than {MAX_KEY_TEXT} bytes; it is not a private key")));
    }
    let undecodable = |e: &dyn std::fmt::Display| KeyError::Undecodable(e.to_string());
    // russh's own test for PuTTY files; the same text goes to the same parser below.
    if text.trim().starts_with("PuTTY-User-Key-File-") {
        check_ppk(text).map_err(refuse)?;
        return PrivateKey::from_ppk(text, passphrase.map(Into::into)).map_err(|e| undecodable(&e));
    }
    let (format, bytes) = container(text).map_err(refuse)?;
    match format {
        Format::Openssh => {
            check_openssh(&bytes).map_err(refuse)?;
            russh::keys::decode_openssh(&bytes, passphrase).map_err(|e| undecodable(&e))
        }
        Format::Pkcs8 => {
            check_pkcs8(&bytes).map_err(refuse)?;
            russh::keys::pkcs8::decode_pkcs8(&bytes, passphrase.map(str::as_bytes)).map_err(|e| undecodable(&e))
        }
        // One MD5 over passphrase and salt: a fixed, tiny cost.
        Format::LegacyAes128Cbc(iv) => {
            russh::keys::decode_pkcs5(&bytes, passphrase, russh::keys::Encryption::Aes128Cbc(iv))
                .map_err(|e| undecodable(&e))
        }
        // Plain PKCS#1: nothing is decrypted. Re-armoured from the checked bytes so that
        // russh's parser cannot see anything else.
        Format::Rsa => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END RSA PRIVATE KEY-----\n");
            russh::keys::decode_secret_key(&pem, None).map_err(|e| undecodable(&e))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Openssh,
    Rsa,
    Pkcs8,
    LegacyAes128Cbc([u8; 16]),
}

const UNSUPPORTED_PEM: &str = "uses a legacy PEM encryption other than AES-128-CBC, which cannot be used; \
     re-encrypt it with `ssh-keygen -p -f KEY`";

/// The format and DER/binary body of a PEM-armoured key, read line by line exactly as
/// `russh::keys::decode_secret_key` does (the last BEGIN line before the first END wins).
fn container(text: &str) -> Result<(Format, Vec<u8>), String> {
    const DEK_AES_128_CBC: &str = "DEK-Info: AES-128-CBC,";
    let mut format = None;
    let mut started = false;
    let mut encrypted_header = false;
    let mut body = String::new();
    for l in text.lines() {
        if started {
            if l.starts_with("-----END ") {
                break;
            }
            if l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '=')) {
                body.push_str(l);
            } else if let Some(iv) = l.strip_prefix(DEK_AES_128_CBC) {
                let iv = hex16(iv).ok_or("has a malformed DEK-Info line")?;
                format = Some(Format::LegacyAes128Cbc(iv));
            } else if l.starts_with("Proc-Type:") && l.contains("ENCRYPTED") {
                encrypted_header = true;
            }
        }
        match l {
            "-----BEGIN OPENSSH PRIVATE KEY-----" => format = Some(Format::Openssh),
            "-----BEGIN RSA PRIVATE KEY-----" => format = Some(Format::Rsa),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----" | "-----BEGIN PRIVATE KEY-----" | "-----BEGIN EC PRIVATE KEY-----" => {
                format = Some(Format::Pkcs8)
            }
            _ => continue,
        }
        started = true;
    }
    let format = format.ok_or("is not an OpenSSH or PEM private key (no -----BEGIN … PRIVATE KEY----- line)")?;
    // `Proc-Type: 4,ENCRYPTED` without a DEK-Info russh can decrypt: refuse rather than
    // hand ciphertext to a plain decoder.
    if encrypted_header && !matches!(format, Format::LegacyAes128Cbc(_)) {
        return Err(UNSUPPORTED_PEM.into());
    }
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = lenient.decode(body.as_bytes()).map_err(|_| "is damaged: its base64 body does not decode")?;
    Ok((format, bytes))
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `openssh-key-v1`: cipher, KDF name and KDF options (PROTOCOL.key); bcrypt's options
/// are a salt string and a rounds count.
fn check_openssh(bytes: &[u8]) -> Result<(), String> {
    let damaged = || "is not a valid OpenSSH private key".to_string();
    let mut r = bytes.strip_prefix(b"openssh-key-v1\0").ok_or_else(damaged)?;
    let _cipher = ssh_string(&mut r).ok_or_else(damaged)?;
    let kdf = ssh_string(&mut r).ok_or_else(damaged)?;
    let mut options = ssh_string(&mut r).ok_or_else(damaged)?;
    match kdf {
        b"none" => Ok(()),
        b"bcrypt" => {
            let _salt = ssh_string(&mut options).ok_or_else(damaged)?;
            let rounds = ssh_u32(&mut options).ok_or_else(damaged)?;
            if rounds > MAX_BCRYPT_ROUNDS {
                return Err(format!(
                    "is encrypted with {rounds} bcrypt rounds; the host accepts at most {MAX_BCRYPT_ROUNDS}. \
                     Re-encrypt it with `ssh-keygen -p -a 100 -f KEY`"
                ));
            }
            Ok(())
        }
        _ => Err("is encrypted with an unknown key derivation function; only bcrypt is supported".into()),
    }
}

fn ssh_u32(r: &mut &[u8]) -> Option<u32> {
    let (n, rest) = r.split_first_chunk::<4>()?;
    *r = rest;
    Some(u32::from_be_bytes(*n))
}

fn ssh_string<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = ssh_u32(r)? as usize;
    if r.len() < len {
        return None;
    }
    let (s, rest) = r.split_at(len);
    *r = rest;
    Some(s)
}

/// PKCS#8 `EncryptedPrivateKeyInfo`, parsed by the same crate and version russh decrypts
/// with; DER that does not parse as one is never decrypted (russh fails first).
fn check_pkcs8(der: &[u8]) -> Result<(), String> {
    let Ok(info) = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der) else {
        return Ok(());
    };
    let params = match &info.encryption_algorithm {
        pkcs5::EncryptionScheme::Pbes2(p) => p,
        _ => {
            return Err("is encrypted with a scheme other than PKCS#5 PBES2, which is not supported; \
                 re-encrypt it with `openssl pkcs8 -topk8 -v2 aes256`"
                .into())
        }
    };
    let redo = "Re-encrypt it with `openssl pkcs8 -topk8 -v2 aes256` or `ssh-keygen -p -f KEY`";
    match &params.kdf {
        pbes2::Kdf::Pbkdf2(k) if k.iteration_count > MAX_PBKDF2_ITERATIONS => Err(format!(
            "is encrypted with {} PBKDF2 iterations; the host accepts at most {MAX_PBKDF2_ITERATIONS}. {redo}",
            k.iteration_count
        )),
        pbes2::Kdf::Pbkdf2(_) => Ok(()),
        pbes2::Kdf::Scrypt(s) => {
            let (n, r, p) = (u128::from(s.cost_parameter), u128::from(s.block_size), u128::from(s.parallelization));
            let memory = 128 * r * n;
            let work = n * r * p;
            if memory > u128::from(MAX_SCRYPT_MEMORY) || work > u128::from(MAX_SCRYPT_WORK) {
                return Err(format!(
                    "is encrypted with scrypt N={n}, r={r}, p={p} ({} MiB, N·r·p={work}); the host accepts at most \
                     {} MiB and N·r·p={MAX_SCRYPT_WORK}. {redo}",
                    memory >> 20,
                    MAX_SCRYPT_MEMORY >> 20
                ));
            }
            Ok(())
        }
        _ => Err(format!("is encrypted with an unknown key derivation function. {redo}")),
    }
}

/// PuTTY `.ppk`, read as ssh-key's parser reads it (`Key: value` lines, `*-Lines: n`
/// blocks skipped); v3 with `aes256-cbc` derives with Argon2 and is checked.
fn check_ppk(text: &str) -> Result<(), String> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let version = header
        .strip_prefix("PuTTY-User-Key-File-")
        .and_then(|h| h.split_once(": "))
        .and_then(|(v, _)| v.parse::<u8>().ok());
    let mut values = std::collections::BTreeMap::new();
    while let Some(line) = lines.next() {
        let Some((key, value)) = line.split_once(": ") else { break };
        if key.ends_with("-Lines") {
            // Bounded by the text, not by the count it claims.
            for _ in 0..value.parse::<usize>().unwrap_or(0) {
                if lines.next().is_none() {
                    break;
                }
            }
        } else {
            values.insert(key, value);
        }
    }
    let encrypted = values.get("Encryption").is_some_and(|e| *e != "none");
    if !encrypted || version == Some(2) {
        // v2 derives with two SHA-1 hashes; unencrypted derives nothing.
        return Ok(());
    }
    let num = |k: &str| values.get(k).and_then(|v| v.parse::<u32>().ok()).map(u64::from);
    let (Some(memory), Some(passes), Some(lanes)) = (num("Argon2-Memory"), num("Argon2-Passes"), num("Argon2-Parallelism"))
    else {
        return Err("is an encrypted PuTTY key whose Argon2 parameters cannot be read".into());
    };
    if memory > MAX_ARGON2_MEMORY_KIB || memory * passes > MAX_ARGON2_WORK_KIB || lanes > MAX_ARGON2_LANES {
        return Err(format!(
            "is a PuTTY key encrypted with Argon2 memory {memory} KiB, {passes} passes, {lanes} lanes; the host \
             accepts at most {MAX_ARGON2_MEMORY_KIB} KiB, memory × passes {MAX_ARGON2_WORK_KIB} and \
             {MAX_ARGON2_LANES} lanes. Convert it: puttygen key.ppk -O private-openssh -o key"
        ));
    }
    Ok(())
}
