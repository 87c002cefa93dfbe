//! Throwaway keys made with ssh-keygen/openssl for these tests only; they guard nothing.
use super::*;

const ED25519: &str = "\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACArr2lGqzC9JIEARkpXHwPo0cK5IC+UdTkdnJmg5RylOgAAAIhH62ykR+ts
pAAAAAtzc2gtZWQyNTUxOQAAACArr2lGqzC9JIEARkpXHwPo0cK5IC+UdTkdnJmg5RylOg
AAAEBG93nH0DfVBPC8UsZNAudmVwli7wruhUPPVWRSpX19gSuvaUarML0kgQBGSlcfA+jR
wrkgL5R1OR2cmaDlHKU6AAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
";

const ED25519_ENCRYPTED: &str = "\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABBTTKpF6c
yc3Infj/KzeqMLAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIJfOREsF7IsmzlKU
OEjI4YwmsFpbUVti1iEaiAZqqebRAAAAkMoLhPJS7SarH1Q9VPvmgf3uaoKosw1xh6+p+S
36/2n9dxBSMy+WOxX6N/9Eggt8YiGbtqvrOKskPHLNb0a1eyjT9TWwPZ3B13dAWrMscp6Y
X3BDnDG5+dle0bcY1glCko7V+v9NWtcdQK86j56E6W4qaE50W+gboqkh0/IwomLriwTptF
/g4mQ7agYMxfI1cg==
-----END OPENSSH PRIVATE KEY-----
";

const ECDSA: &str = "\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAaAAAABNlY2RzYS
1zaGEyLW5pc3RwMjU2AAAACG5pc3RwMjU2AAAAQQR1+sYGP9gqkoCAtAdzdxlWrG3aIYiM
lHJmUk76el+NUvIvRL06TuqdQO2+S/fjwX82oN8DLdIQUYw1sWNA7sC8AAAAmEwSCtpMEg
raAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHX6xgY/2CqSgIC0
B3N3GVasbdohiIyUcmZSTvp6X41S8i9EvTpO6p1A7b5L9+PBfzag3wMt0hBRjDWxY0DuwL
wAAAAgXLP/BKRqfj2QNVxg+CWrhx1MCyn6AChHM871c8UFxTYAAAAA
-----END OPENSSH PRIVATE KEY-----
";

const RSA: &str = "\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAlwAAAAdzc2gtcn
NhAAAAAwEAAQAAAIEA/kcg2WMTM03omGjmQ22dFao2pQFa/3QbcDqOLvBT+td+hz08xTSq
ujQ7hFcJVgs/rom6kIwjZE4P/EJiZf0mi9j3XAj9Ybv+pM39xPY8Nnipnso2Wb5sKpzKX5
3w8tc2fY81xEO+GkU0rf+LjfWvtVrAsc5ZZS/+r2xHjy4BWKcAAAH47zlUuu85VLoAAAAH
c3NoLXJzYQAAAIEA/kcg2WMTM03omGjmQ22dFao2pQFa/3QbcDqOLvBT+td+hz08xTSquj
Q7hFcJVgs/rom6kIwjZE4P/EJiZf0mi9j3XAj9Ybv+pM39xPY8Nnipnso2Wb5sKpzKX53w
8tc2fY81xEO+GkU0rf+LjfWvtVrAsc5ZZS/+r2xHjy4BWKcAAAADAQABAAAAgBAMHR6bCh
Mqz4sO07ldqZQ8ccZoF34XrcOfbmm38RTblLikPLmVYVDvCvKHK6eqfhJdztBgh7tE0e1x
oxQcrdn1Wz/vaigjw1x+xS37Ff0rNqIZ0CSE8OVI90Bhq9bBhwpP9v7MgwnpvKD1SjPXVw
rUqhdqNgXDE7zzmj5VJ3IBAAAAQQDsbxTLWGmv9PYISbuInXUpOiZqFUdsemaqVoX/5Lbm
rIKNybdhWdLl0e/9p0s16P3caIN2pJQmFEgROgbhauJLAAAAQQD/vqR+3k3vPwqdYNms8d
FV6VuaPd4ed0DqCWf149MayKBRV36oasI2rdx1buJa1Bp4A9CfY2OlBBiO/UfUYj7hAAAA
QQD+iBxjXnxogi+Y/S6cuklVBcBvtT5nqv7gBzKGHm2jzq3EeNb3zrzGUqjROFRcSeRvjh
TozmUAvDJjCMwXaDCHAAAAAAEC
-----END OPENSSH PRIVATE KEY-----
";

const PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBANTa/Y1oXBPrRQxSfIUKKcuZk4xrjKaXaLjvckb4gQTedSzvCxnq
+dnGbb7K0HA2JojuSaZQ3DcSnTf/tDZDUdcCAwEAAQJAHKBvJUt5xrwHh0a4tHPP
dzBqZaI5QlZuoSCi7+SQBYVe1KfacIzaTAjKQFrscCBNRzEF1kzoHLU5L5IZ/rvR
QQIhAO1cDE5kxmrzcsUdlLTqq4qiRobP5Eh/EwbRqgCJ3IERAiEA5ZJNtLzUxt9E
MtloY8/9ldD6rtEADdV4EWj4MMYVJGcCIEJtQVBrKZBi41rA5Y4gIrPgqEYwRh33
2jZNVPtjmZ9RAiEAnFikVTfZDUvWrW7FGlz3TgXSBCbQi5tbNzgu90Cf+3cCIBnf
OWiWap9fJzD92H4LFHMtYog37XcdJcd+ZqWEE1vQ
-----END RSA PRIVATE KEY-----
";

const PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDsdwwVFS2N8oboFgBpCvTZ/RV8vU2kR7CzKjFkjp2DC
-----END PRIVATE KEY-----
";

const SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIEMVamRSB6BtZ9NwyMJ7jialMtbtHJcRrSFF+CCb4BkDoAoGCCqGSM49
AwEHoUQDQgAEDyitJdt0Id1Rbwm6CX9I/2VwYWnM68QVWdJkHmCh3mp4VN4ipo0k
iJelF98fKwR93mG3/rzcrvIgA+KoO+AlYg==
-----END EC PRIVATE KEY-----
";

const PKCS8_ENCRYPTED: &str = "\
-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGbMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAiu7F2waALMvQICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEHzfWURKzFhHzlyNjMBfrEwEQO10
yj4l83qcSCYXN96jMwvtqVLMBuGYG12oJ3MiIdkYavY2OA7hlUj15bOpumfXn8jY
4R+amYb05c55p1655Mk=
-----END ENCRYPTED PRIVATE KEY-----
";

const PKCS1_ENCRYPTED: &str = "\
-----BEGIN RSA PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED
DEK-Info: AES-128-CBC,EE09653F1B35544DBD3162E4467160B8

YIfoxuOWI0ZI/xaQ+fvsJYswQOme5dfKqqwwf4dubNaz/b0oarCLg/Z6usuLgbe0
hO7c3A7ubzqHFxbXOa7+sJVuIUbdHSnJS1ViyJP8iBc92WHsNKoNUocHrerBhLIB
1k7GbbTsbBPd2UqcyUkhtERL35F3NXRkn5PllpagMeV4qONVIhFi9w+XsFzZ3H5e
QbbxfXQRY03EiEoUNsp89GJkzxcko5C8+++c9TYGVgBPDGcFG2wMhr6BUy5BrJtB
XIN0yBpQId+As8GyMfd4yyIRjSt//uukPuRJ4DEXijj1Dt1aS/l6W2VJTTwAZ+VH
rXcjdiv50K7JoysI/3S78v6KgYmxYiRrn6Nf0sEkCX+b4Hq59DHwLLZRxD0KB4Og
BY3khELI7y06A024WTneNYsUQCABy+0Fn05FNgnavgY=
-----END RSA PRIVATE KEY-----
";

const ED25519_PUBLIC: &str = "\
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICuvaUarML0kgQBGSlcfA+jRwrkgL5R1OR2cmaDlHKU6 
";

#[test]
fn accepts_openssh_keys() {
    for key in [ED25519, ECDSA, RSA] {
        assert_eq!(check_private_key(key), Ok(false));
    }
    assert_eq!(check_private_key(ED25519_ENCRYPTED), Ok(true));
    let crlf = format!("  {}  ", ED25519.replace('\n', "\r\n"));
    assert_eq!(check_private_key(&crlf), Ok(false));
}

#[test]
fn accepts_pem_keys() {
    for key in [PKCS1, PKCS8, SEC1] {
        assert_eq!(check_private_key(key), Ok(false));
    }
    for key in [PKCS8_ENCRYPTED, PKCS1_ENCRYPTED] {
        assert_eq!(check_private_key(key), Ok(true));
    }
}

#[test]
fn names_public_keys() {
    assert_eq!(check_private_key(ED25519_PUBLIC), Err(PUBLIC));
    assert_eq!(
        check_private_key("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"),
        Err(PUBLIC)
    );
}

#[test]
fn rejects_damaged_keys() {
    let truncated = &ED25519[..ED25519.len() - 40];
    assert!(check_private_key(truncated)
        .unwrap_err()
        .contains("incomplete"));
    // Flip one base64 character in the private half: the halves no longer match.
    let mut flipped = ED25519.to_string();
    let at = ED25519.len() / 2;
    let c = if &flipped[at..=at] == "A" { "B" } else { "A" };
    flipped.replace_range(at..=at, c);
    assert!(check_private_key(&flipped).is_err());
    let bad_der = PKCS1.replacen("MII", "AII", 1);
    assert!(check_private_key(&bad_der).unwrap_err().contains("damaged"));
    assert!(check_private_key(
        "-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----"
    )
    .unwrap_err()
    .contains("base64"));
    assert!(
        check_private_key("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err()
    );
    assert_eq!(check_private_key("hunter2"), Err(NOT_A_KEY));
    assert!(check_private_key("PuTTY-User-Key-File-3: ssh-ed25519")
        .unwrap_err()
        .contains("puttygen"));
}

#[test]
fn der_lengths() {
    assert_eq!(tlv(&[0x30, 0x03, 0x02, 0x01, 0x00]), Some((0x30, 2, 3)));
    assert_eq!(tlv(&[0x30, 0x81, 0x01, 0x02]), Some((0x30, 3, 1)));
    assert_eq!(tlv(&[0x30, 0x05, 0x02]), None);
    assert_eq!(tlv(&[0x30, 0x80]), None);
    assert!(der_outline_ok(&[0x30, 0x03, 0x02, 0x01, 0x00], 0x02));
    assert!(!der_outline_ok(&[0x30, 0x03, 0x02, 0x01, 0x00, 0x00], 0x02));
}

/// `ED25519_ENCRYPTED` with its bcrypt rounds field set to `rounds`.
fn with_rounds(rounds: u32) -> String {
    let body: String = ED25519_ENCRYPTED.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut bin = Base64::decode_vec(&body).unwrap();
    // magic, then the cipher and KDF name strings, the options length and the salt string.
    let mut at = b"openssh-key-v1\0".len();
    for _ in 0..2 {
        let len = u32::from_be_bytes(bin[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    at += 4;
    at += 4 + u32::from_be_bytes(bin[at..at + 4].try_into().unwrap()) as usize;
    bin[at..at + 4].copy_from_slice(&rounds.to_be_bytes());
    let b64 = Base64::encode_string(&bin);
    let lines: Vec<&str> = b64.as_bytes().chunks(70).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n", lines.join("\n"))
}

#[test]
fn refuses_absurd_bcrypt_rounds() {
    assert_eq!(check_private_key(&with_rounds(16)), Ok(true), "the unpatched rounds");
    assert_eq!(check_private_key(&with_rounds(MAX_BCRYPT_ROUNDS)), Ok(true));
    for rounds in [MAX_BCRYPT_ROUNDS + 1, u32::MAX] {
        assert_eq!(check_private_key(&with_rounds(rounds)), Err(TOO_MANY_ROUNDS));
    }
}
