//! Offline checks of a pasted private key: OpenSSH keys are fully decoded (public and
//! private halves must match); PEM keys get their armour, base64 and DER outline checked.
//! Messages complete nothing: they are whole sentences that never quote the key.

use base64ct::{Base64, Encoding};
use ssh_key::PrivateKey;

const OPENSSH: &str = "OPENSSH PRIVATE KEY";
/// PEM labels of private keys; the last one is PKCS#8's encrypted form.
const PEM_LABELS: &[&str] = &[
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// Highest bcrypt rounds (`ssh-keygen -a`) of an encrypted OpenSSH key; mirrors
/// `MAX_BCRYPT_ROUNDS` in host/src/plugins/caps/keys.rs, which the host enforces.
const MAX_BCRYPT_ROUNDS: u32 = 200;
const TOO_MANY_ROUNDS: &str = "private_key is encrypted with more than 200 bcrypt rounds, which the host refuses to \
     decrypt; re-encrypt it with `ssh-keygen -p -a 100 -f KEY`.";
const PUBLIC: &str = "private_key holds a public key; paste the private key instead (the key file without .pub, such as ~/.ssh/id_ed25519).";
const NOT_A_KEY: &str = "private_key must be an OpenSSH or PEM private key, starting with -----BEGIN … PRIVATE KEY-----.";
const BAD_BASE64: &str =
    "private_key is damaged: its base64 body does not decode; copy the whole key file again.";

/// Whether the key needs a passphrase, or what is wrong with it.
pub fn check_private_key(text: &str) -> Result<bool, &'static str> {
    let text = text.trim().replace("\r\n", "\n");
    if is_public_key(&text) {
        return Err(PUBLIC);
    }
    if text.starts_with("PuTTY-User-Key-File-") {
        return Err("private_key is a PuTTY key; convert it first: puttygen key.ppk -O private-openssh -o key");
    }
    let (label, body) = armour(&text)?;
    if label == OPENSSH {
        return check_openssh(&text);
    }
    if !PEM_LABELS.contains(&label) {
        return Err("private_key holds a PEM block that is not a private key.");
    }
    let (encrypted_headers, base64) = split_headers(body);
    let der = Base64::decode_vec(&base64).map_err(|_| BAD_BASE64)?;
    let encrypted_pkcs8 = label == "ENCRYPTED PRIVATE KEY";
    // PKCS#1/SEC1/DSA/PKCS#8 start with a version INTEGER; encrypted PKCS#8 with an algorithm
    // SEQUENCE; a legacy encrypted body is block-cipher output with no visible structure.
    let outline_ok = if encrypted_headers {
        !der.is_empty() && der.len() % 8 == 0
    } else {
        der_outline_ok(&der, if encrypted_pkcs8 { 0x30 } else { 0x02 })
    };
    if !outline_ok {
        return Err("private_key is damaged: its content is not a DER-encoded private key.");
    }
    Ok(encrypted_pkcs8 || encrypted_headers)
}

fn is_public_key(text: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "ssh-",
        "ecdsa-sha2-",
        "sk-ssh-",
        "sk-ecdsa-",
        "---- BEGIN SSH2 PUBLIC KEY",
    ];
    PREFIXES.iter().any(|p| text.starts_with(p))
        || (text.starts_with("-----BEGIN ")
            && text
                .lines()
                .next()
                .is_some_and(|l| l.contains("PUBLIC KEY")))
}

/// The label and the text between `-----BEGIN label-----` and `-----END label-----`.
fn armour(text: &str) -> Result<(&str, &str), &'static str> {
    let rest = text.strip_prefix("-----BEGIN ").ok_or(NOT_A_KEY)?;
    let (label, rest) = rest.split_once("-----").ok_or(NOT_A_KEY)?;
    let end = format!("-----END {label}-----");
    let body = rest.strip_suffix(end.as_str()).ok_or(
        "private_key is incomplete: it must end with the -----END … PRIVATE KEY----- line that matches its BEGIN line.",
    )?;
    Ok((label, body))
}

/// RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`) and the base64 without whitespace.
fn split_headers(body: &str) -> (bool, String) {
    let mut encrypted = false;
    let mut base64 = String::with_capacity(body.len());
    for line in body.lines().map(str::trim) {
        if let Some((name, value)) = line.split_once(':') {
            encrypted |= name.eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED");
        } else {
            base64.push_str(line);
        }
    }
    (encrypted, base64)
}

/// A definite-length SEQUENCE spanning all of `der`, whose first element has tag `first_inner`.
fn der_outline_ok(der: &[u8], first_inner: u8) -> bool {
    let Some((0x30, header, len)) = tlv(der) else {
        return false;
    };
    header + len == der.len() && tlv(&der[header..]).is_some_and(|(tag, ..)| tag == first_inner)
}

/// Tag, header length and content length of the DER element at the start of `der`.
fn tlv(der: &[u8]) -> Option<(u8, usize, usize)> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if first < 0x80 {
        return Some((tag, 2, first as usize)).filter(|&(_, _, len)| len <= rest.len());
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    (len <= rest.len() - n).then_some((tag, 2 + n, len))
}

fn check_openssh(text: &str) -> Result<bool, &'static str> {
    match PrivateKey::from_openssh(text) {
        Ok(key) => match key.kdf() {
            // Refused here for a clear message at create; the host enforces the same limit.
            ssh_key::Kdf::Bcrypt { rounds, .. } if *rounds > MAX_BCRYPT_ROUNDS => Err(TOO_MANY_ROUNDS),
            _ => Ok(key.is_encrypted()),
        },
        Err(ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. }) => {
            Err("private_key uses a key type that is not supported; use an Ed25519, ECDSA or RSA key.")
        }
        Err(ssh_key::Error::Crypto | ssh_key::Error::PublicKey) => {
            Err("private_key is damaged: its public and private parts do not match; copy the whole key file again.")
        }
        Err(ssh_key::Error::Encoding(_)) => Err(BAD_BASE64),
        Err(_) => Err("private_key is not a valid OpenSSH private key; copy the whole key file again."),
    }
}

#[cfg(test)]
mod tests;
