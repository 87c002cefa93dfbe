//! Removing secret values from text that leaves the host's trust boundary
//! (plugin output, HTTP responses handed to plugins, log lines).
//!
//! A [`Scrubber`] is built once per set of secrets and then applied to every text of a
//! call (response headers, body, errors, facts). It finds a secret
//! - in *needles* precomputed per secret, for the value, its trimmed form and each line
//!   (≥ [`MIN_LINE_LEN`] characters) of a multi-line value: raw; `+` for space; std and URL-safe base64,
//!   padded and unpadded; percent-encoded (upper/lower hex, form-encoded); JSON-escaped
//!   (as serde_json writes it, all-ASCII `\uXXXX`, with `\/`); hex lower/upper;
//! - through *views* of the text that undo one layer of percent- or JSON-escaping, so a
//!   secret escaped with any escape set or case is found as its raw bytes;
//! - in *base64 runs*: every run of base64-alphabet characters (both alphabets, any
//!   padding) is decoded at all four alignments and the whole run is redacted if the
//!   decoded bytes hold any needle. That covers `Basic base64(user:secret)` for any user.
//!
//! [`Scrubber::scrub_capped`] scrubs before cutting to a size limit and never leaves a
//! partial secret (not even one character) at the cut.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not scrubbed: replacing every `a` in a text
/// would destroy it and protect nothing. Types should demand longer secrets.
pub const MIN_SCRUB_LEN: usize = 4;

/// Replaces every value in `secrets`, in every form the [`Scrubber`] knows, with [`REDACTED`].
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    Scrubber::new(secrets).scrub(text)
}

/// Secret forms precomputed from a set of secrets; see the module docs.
pub struct Scrubber {
    /// Every form of every secret, longest first, deduplicated.
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// `by_first[b]`: indices of the needles starting with byte `b` (longest first).
    by_first: Vec<Vec<usize>>,
    longest: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the needles themselves: they are the secrets.
        f.debug_struct("Scrubber").field("needles", &self.needles.len()).finish()
    }
}

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a SecretString>) -> Scrubber {
        let mut needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for s in secrets {
            for v in variants(s.expose_secret()) {
                for form in forms(v) {
                    needles.push(Zeroizing::new(form));
                }
            }
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.as_slice().cmp(b.as_slice())));
        needles.dedup_by(|a, b| a.as_slice() == b.as_slice());
        let mut by_first = vec![Vec::new(); 256];
        for (i, n) in needles.iter().enumerate() {
            by_first[usize::from(n[0])].push(i);
        }
        let longest = needles.first().map_or(0, |n| n.len());
        Scrubber { needles, by_first, longest }
    }

    /// No secret long enough to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// How far past a size limit a caller should read so that a secret crossing the
    /// limit is seen whole (the longest needle, base64-grown, plus slack).
    pub fn margin(&self) -> usize {
        self.longest.div_ceil(3) * 4 + 16
    }

    /// `text` with every secret form replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        self.scrub_marked(text).0
    }

    /// Scrubs `text`, then cuts it to at most `limit` bytes (on a char boundary) when it
    /// is longer or `more` says the source went on. At a cut, a tail that could be the
    /// start of a secret in any form (any length ≥ 1 byte) is replaced by [`REDACTED`],
    /// so the result may exceed `limit` by at most `REDACTED.len()` bytes.
    /// Returns the text and whether it was cut.
    pub fn scrub_capped(&self, text: &str, limit: usize, more: bool) -> (String, bool) {
        let (mut out, markers) = self.scrub_marked(text);
        if text.len() <= limit && !more {
            return (out, false);
        }
        let mut cut = floor_char(&out, limit.min(out.len()));
        // Never half a marker: keep it whole (it says a secret was there).
        if let Some(m) = markers.iter().find(|m| m.start < cut && cut < m.end) {
            cut = m.end;
        }
        out.truncate(cut);
        if !self.is_empty() && !out.ends_with(REDACTED) {
            if let Some(from) = self.partial_tail(&out) {
                out.truncate(floor_char(&out, from));
                out.push_str(REDACTED);
            }
        }
        (out, true)
    }

    /// The scrubbed text and where the markers are in it.
    fn scrub_marked(&self, text: &str) -> (String, Vec<Range<usize>>) {
        if self.is_empty() || text.is_empty() {
            return (text.to_string(), Vec::new());
        }
        let mut hits: Vec<Range<usize>> = Vec::new();
        for view in views(text.as_bytes()) {
            self.each_match(&view.bytes, |r| hits.push(view.orig(r)));
            for run in base64_runs(&view.bytes) {
                if run.len() >= 6 && (0..4).any(|k| self.contains(&b64_decode(&view.bytes[run.start + k.min(run.len())..run.end]).0)) {
                    hits.push(view.orig(run));
                }
            }
        }
        if hits.is_empty() {
            return (text.to_string(), Vec::new());
        }
        hits.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(text.len());
        let mut markers = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while i < hits.len() {
            let start = floor_char(text, hits[i].start.max(pos));
            let mut end = hits[i].end;
            i += 1;
            while i < hits.len() && hits[i].start <= end {
                end = end.max(hits[i].end);
                i += 1;
            }
            let end = ceil_char(text, end);
            if end <= pos {
                continue;
            }
            let start = start.max(pos);
            out.push_str(&text[pos..start]);
            markers.push(out.len()..out.len() + REDACTED.len());
            out.push_str(REDACTED);
            pos = end;
        }
        out.push_str(&text[pos..]);
        (out, markers)
    }

    /// Calls `hit` with the range of every needle occurrence in `hay` (overlaps included).
    fn each_match(&self, hay: &[u8], mut hit: impl FnMut(Range<usize>)) {
        for i in 0..hay.len() {
            for &n in &self.by_first[usize::from(hay[i])] {
                let n = &self.needles[n];
                if hay[i..].starts_with(n) {
                    hit(i..i + n.len());
                    break; // longest first: shorter ones at `i` lie inside this hit
                }
            }
        }
    }

    fn contains(&self, hay: &[u8]) -> bool {
        let mut found = false;
        self.each_match(hay, |_| found = true);
        found
    }

    /// Where a cut text's tail that may begin a secret starts (original byte offset):
    /// an unfinished escape, a suffix that is a prefix of a needle (in any view), or a
    /// base64 run whose decoded end (whole bytes plus leftover bits) may begin one.
    fn partial_tail(&self, text: &str) -> Option<usize> {
        let mut from: Option<usize> = None;
        let mut take = |p: usize| from = Some(from.map_or(p, |f| f.min(p)));
        for view in views(text.as_bytes()) {
            let mut end = view.bytes.len();
            if let Some(esc) = view.unfinished {
                take(esc);
                end = view.first_at_or_after(esc);
            }
            let bytes = &view.bytes[..end];
            if let Some(k) = self.longest_prefix_suffix(bytes) {
                take(view.orig(end - k..end).start);
            }
            let run = base64_runs(bytes).into_iter().last().filter(|r| r.end == end);
            if let Some(run) = run {
                for k in 0..4.min(run.len()) {
                    let (dec, bits, nbits) = b64_decode(&bytes[run.start + k..run.end]);
                    if self.ends_with_partial(&dec, bits, nbits) {
                        take(view.orig(run.clone()).start);
                        break;
                    }
                }
            }
        }
        from
    }

    /// The longest `k ≥ 1` such that `hay` ends with the first `k` bytes of a needle.
    fn longest_prefix_suffix(&self, hay: &[u8]) -> Option<usize> {
        let mut best = None;
        for n in &self.needles {
            for k in (1..=n.len().min(hay.len())).rev() {
                if best.is_some_and(|b| b >= k) {
                    break;
                }
                if hay.ends_with(&n[..k]) {
                    best = Some(k);
                    break;
                }
            }
        }
        best
    }

    /// Do `dec` and the `nbits` leftover bits `bits` end like the start of a needle?
    fn ends_with_partial(&self, dec: &[u8], bits: u32, nbits: u32) -> bool {
        self.needles.iter().any(|n| {
            (0..n.len()).any(|j| {
                (j > 0 || nbits > 0)
                    && dec.ends_with(&n[..j])
                    && (nbits == 0 || u32::from(n[j]) >> (8 - nbits) == bits)
            })
        })
    }
}

/// Lines of a multi-line secret shorter than this (in characters, trimmed) are not
/// searched on their own: PEM's `-----` or a blank line would redact everything.
pub const MIN_LINE_LEN: usize = 8;

/// The texts searched for one secret (each in every [`forms`] encoding): the value, its
/// trimmed form (a secret read from a file ends with `\n`, which a printed line lacks),
/// and each trimmed line of a multi-line secret (a PEM key printed, logged or split line
/// by line). Parts of the secret, so never copies.
fn variants(v: &str) -> Vec<&str> {
    let trimmed = v.trim();
    let mut out: Vec<&str> = [v, trimmed].into_iter().filter(|t| t.len() >= MIN_SCRUB_LEN).collect();
    if trimmed.contains(['\n', '\r']) {
        out.extend(trimmed.split(['\n', '\r']).map(str::trim).filter(|l| l.chars().count() >= MIN_LINE_LEN));
    }
    out.dedup();
    out
}

/// Every form of one secret that is searched for literally.
fn forms(v: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out: Vec<Vec<u8>> = vec![v.as_bytes().to_vec(), v.replace(' ', "+").into_bytes()];
    for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(e.encode(v).into_bytes());
    }
    let pct = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
    out.push(lower_escapes(&pct, b'%', 2).into_bytes());
    out.push(pct.into_bytes());
    out.push(url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>().into_bytes());
    let json = serde_json::to_string(v).unwrap_or_default();
    let json = json.get(1..json.len().saturating_sub(1)).unwrap_or_default();
    out.push(json.replace('/', "\\/").into_bytes());
    out.push(json.as_bytes().to_vec());
    // Hex digits written directly: a `format!` per character made building a scrubber
    // (once per sandboxed call with secrets) a few percent of a create's CPU.
    let mut ascii = String::with_capacity(v.len() * 6);
    for c in v.chars() {
        let mut units = [0u16; 2];
        for u in c.encode_utf16(&mut units) {
            ascii.push_str("\\u");
            push_hex(&mut ascii, &u.to_be_bytes());
        }
    }
    out.push(ascii.to_ascii_uppercase().replace("\\U", "\\u").into_bytes());
    out.push(ascii.into_bytes());
    let mut hex = String::with_capacity(v.len() * 2);
    push_hex(&mut hex, v.as_bytes());
    out.push(hex.to_ascii_uppercase().into_bytes());
    out.push(hex.into_bytes());
    out
}

/// Appends `bytes` as lower-case hex, two digits each.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// `s` with the `digits` hex digits after each `lead` byte in lower case (the rest kept).
fn lower_escapes(s: &str, lead: u8, digits: usize) -> String {
    let mut out = s.as_bytes().to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == lead {
            for b in out.iter_mut().skip(i + 1).take(digits) {
                b.make_ascii_lowercase();
            }
            i += digits;
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The text with one layer of escaping undone, and where each byte came from.
struct View<'a> {
    bytes: Cow<'a, [u8]>,
    /// Original offset of the escape (or byte) each view byte came from; `None`: identity.
    src: Option<Vec<u32>>,
    orig_len: usize,
    /// Original offset of an escape left unfinished at the very end.
    unfinished: Option<usize>,
}

impl View<'_> {
    fn start_of(&self, j: usize) -> usize {
        match &self.src {
            None => j,
            Some(s) => s.get(j).map_or(self.orig_len, |&x| x as usize),
        }
    }

    /// The original range the view range `r` came from (whole escapes).
    fn orig(&self, r: Range<usize>) -> Range<usize> {
        let Some(src) = &self.src else { return r };
        if r.is_empty() {
            let p = self.start_of(r.start);
            return p..p;
        }
        let last = src[r.end - 1];
        let mut k = r.end;
        while k < src.len() && src[k] == last {
            k += 1;
        }
        self.start_of(r.start)..self.start_of(k)
    }

    /// The first view byte that came from original offset `o` or later.
    fn first_at_or_after(&self, o: usize) -> usize {
        match &self.src {
            None => o.min(self.bytes.len()),
            Some(s) => s.partition_point(|&x| (x as usize) < o),
        }
    }
}

/// The identity view, plus a percent-decoded and a JSON-unescaped one when the text
/// has escapes of that kind.
fn views(text: &[u8]) -> Vec<View<'_>> {
    let mut out = vec![View { bytes: Cow::Borrowed(text), src: None, orig_len: text.len(), unfinished: None }];
    if text.contains(&b'%') {
        out.push(percent_view(text));
    }
    if text.contains(&b'\\') {
        out.push(json_view(text));
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_view(t: &[u8]) -> View<'_> {
    let (mut bytes, mut src) = (Vec::with_capacity(t.len()), Vec::with_capacity(t.len()));
    let mut unfinished = None;
    let mut i = 0;
    while i < t.len() {
        if t[i] == b'%' {
            match (t.get(i + 1).copied().and_then(hex_val), t.get(i + 2).copied().and_then(hex_val)) {
                (Some(h), Some(l)) => {
                    bytes.push(h << 4 | l);
                    src.push(i as u32);
                    i += 3;
                    continue;
                }
                (Some(_), None) if i + 2 == t.len() => unfinished = Some(i),
                (None, _) if i + 1 == t.len() => unfinished = Some(i),
                _ => {}
            }
        }
        bytes.push(t[i]);
        src.push(i as u32);
        i += 1;
    }
    View { bytes: Cow::Owned(bytes), src: Some(src), orig_len: t.len(), unfinished }
}

fn json_view(t: &[u8]) -> View<'_> {
    let (mut bytes, mut src) = (Vec::with_capacity(t.len()), Vec::with_capacity(t.len()));
    let mut unfinished = None;
    let u4 = |at: usize| -> Option<u32> {
        let h = t.get(at..at + 4)?;
        h.iter().try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex_val(b)?)))
    };
    let mut i = 0;
    while i < t.len() {
        if t[i] == b'\\' {
            let short = match t.get(i + 1) {
                Some(b'"') => Some(b'"'),
                Some(b'\\') => Some(b'\\'),
                Some(b'/') => Some(b'/'),
                Some(b'b') => Some(8),
                Some(b'f') => Some(12),
                Some(b'n') => Some(b'\n'),
                Some(b'r') => Some(b'\r'),
                Some(b't') => Some(b'\t'),
                _ => None,
            };
            if let Some(b) = short {
                bytes.push(b);
                src.push(i as u32);
                i += 2;
                continue;
            }
            if t.get(i + 1) == Some(&b'u') {
                if let Some(hi) = u4(i + 2) {
                    let (c, len) = if (0xd800..0xdc00).contains(&hi) {
                        match (t.get(i + 6..i + 8), u4(i + 8)) {
                            (Some(b"\\u"), Some(lo)) if (0xdc00..0xe000).contains(&lo) => {
                                (char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)), 12)
                            }
                            _ => {
                                // A high surrogate cut off before its low half.
                                if t.len() < i + 12 && t[i + 6..].iter().enumerate().all(|(k, &b)| match k {
                                    0 => b == b'\\',
                                    1 => b == b'u',
                                    _ => hex_val(b).is_some(),
                                }) {
                                    unfinished = Some(i);
                                }
                                (None, 6)
                            }
                        }
                    } else {
                        (char::from_u32(hi), 6)
                    };
                    if let Some(c) = c {
                        let mut buf = [0u8; 4];
                        for &b in c.encode_utf8(&mut buf).as_bytes() {
                            bytes.push(b);
                            src.push(i as u32);
                        }
                        i += len;
                        continue;
                    }
                } else if t.len() < i + 6 && t[i + 2..].iter().all(|&b| hex_val(b).is_some()) {
                    unfinished = Some(i);
                }
            } else if i + 1 == t.len() {
                unfinished = Some(i);
            }
        }
        bytes.push(t[i]);
        src.push(i as u32);
        i += 1;
    }
    View { bytes: Cow::Owned(bytes), src: Some(src), orig_len: t.len(), unfinished }
}

fn b64_val(b: u8) -> Option<u32> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    } as u32)
}

/// Runs of base64-alphabet bytes (both alphabets), each with its trailing `=` padding.
fn base64_runs(t: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if b64_val(t[i]).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        while i < t.len() && b64_val(t[i]).is_some() {
            i += 1;
        }
        while i < t.len() && t[i] == b'=' {
            i += 1;
        }
        out.push(start..i);
    }
    out
}

/// Lenient decode of both alphabets, padding ignored: whole bytes, then the leftover
/// bits and how many there are.
fn b64_decode(t: &[u8]) -> (Vec<u8>, u32, u32) {
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let (mut acc, mut n) = (0u32, 0u32);
    for v in t.iter().filter_map(|&b| b64_val(b)) {
        acc = (acc << 6 | v) & 0xfff;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    (out, acc & ((1 << n) - 1), n)
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use proptest::prelude::*;

    #[test]
    fn scrubs_plain_base64_and_url_forms() {
        let s = SecretString::from("p@ss word!");
        let b64 = STANDARD.encode("p@ss word!");
        let text = format!("a p@ss word! b {b64} c p%40ss%20word%21 d");
        let out = scrub(&text, [&s]);
        assert_eq!(out, "a [REDACTED] b [REDACTED] c [REDACTED] d");
    }

    #[test]
    fn short_values_are_left_alone() {
        let s = SecretString::from("ab");
        assert_eq!(scrub("abc", [&s]), "abc");
    }

    #[test]
    fn basic_auth_for_any_user_and_any_alignment() {
        let s = SecretString::from("hunter2-secret");
        for user in ["", "u", "us", "usr", "a-long-user-name"] {
            let b = STANDARD.encode(format!("{user}:hunter2-secret"));
            let out = scrub(&format!("Authorization: Basic {b}\nx"), [&s]);
            assert_eq!(out, "Authorization: Basic [REDACTED]\nx", "{user}");
        }
        // Glued to other base64-alphabet text, at every alignment.
        for pre in ["", "x", "xy", "xyz"] {
            let out = scrub(&format!("{pre}{}", URL_SAFE_NO_PAD.encode("hunter2-secret")), [&s]);
            assert_eq!(out, REDACTED, "{pre}");
        }
    }

    #[test]
    fn hex_and_unicode_escape_forms_match_their_definition() {
        for v in ["aZ09-_/+", "é€😀x"] {
            let got = forms(v);
            let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
            let esc: String = v.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            for want in [hex.clone(), hex.to_ascii_uppercase(), esc.clone(), esc.to_ascii_uppercase().replace("\\U", "\\u")] {
                assert!(got.iter().any(|f| f.as_slice() == want.as_bytes()), "{v:?}: no form {want:?}");
            }
        }
    }

    #[test]
    fn json_escaped_forms() {
        let v = "q\"uo\\te/é✓😀";
        let s = SecretString::from(v);
        let serde = serde_json::to_string(&serde_json::json!({ "k": v })).unwrap();
        assert_eq!(scrub(&serde, [&s]), r#"{"k":"[REDACTED]"}"#);
        let ascii = "\"q\\\"uo\\\\te\\/\\u00E9\\u2713\\ud83d\\ude00\"";
        assert_eq!(scrub(ascii, [&s]), "\"[REDACTED]\"");
    }

    #[test]
    fn cut_never_leaves_a_partial_secret() {
        let s = SecretString::from("0123456789abcdefghij0123456789xyz");
        let text = format!("{}0123456789abcdefghij0123456789xyz tail", "-".repeat(100));
        let sc = Scrubber::new([&s]);
        for limit in 100..text.len() {
            let (out, cut) = sc.scrub_capped(&text, limit, false);
            assert!(cut);
            assert!(out.len() <= limit + REDACTED.len());
            assert!(!out.contains("0123"), "{limit}: {out}");
        }
        // Header-sized texts that were not cut are left alone.
        assert_eq!(sc.scrub_capped("short", 100, false), ("short".to_string(), false));
    }

    #[test]
    fn a_secret_is_found_without_its_surrounding_whitespace() {
        let sc = Scrubber::new([&SecretString::from("core-secret-1\n"), &SecretString::from(" \t core-secret-2\r\n")]);
        // Printed without its whitespace (the raw value, newline included, is a form too).
        assert_eq!(sc.scrub("a core-secret-1, b core-secret-2.\n"), "a [REDACTED], b [REDACTED].\n");
        assert_eq!(sc.scrub("a core-secret-1\nb"), "a [REDACTED]b");
        assert_eq!(sc.scrub(&STANDARD.encode("core-secret-1")), REDACTED);
        // Trimmed to less than MIN_SCRUB_LEN: not searched (it would blank the text).
        assert_eq!(scrub("abc abcd", [&SecretString::from("  abc \n")]), "abc abcd");
    }

    #[test]
    fn each_long_line_of_a_multi_line_secret_is_found_alone() {
        let (l1, l2) = ("MIIEvQIBADANBgkqhkiG9w0B", "QkFBU0NBU0l3Z2dTakFnRUFB");
        let pem = format!("-----BEGIN PRIVATE KEY-----\r\n{l1}\r\n{l2}\r\n-----END PRIVATE KEY-----\n");
        let sc = Scrubber::new([&SecretString::from(pem.clone())]);
        assert_eq!(sc.scrub(&format!("key: {pem}done")), "key: [REDACTED]done");
        assert_eq!(sc.scrub(&format!("1 {l1}\n2 {l2}\n")), "1 [REDACTED]\n2 [REDACTED]\n");
        let json = serde_json::to_string(l2).unwrap();
        assert_eq!(sc.scrub(&format!("{{\"k\":{json}}}")), r#"{"k":"[REDACTED]"}"#);
        // Short lines are not searched on their own.
        let sc = Scrubber::new([&SecretString::from("-----\nabcdefgh\n1234567\n")]);
        assert_eq!(sc.scrub("----- 1234567 abcdefgh"), "----- 1234567 [REDACTED]");
        // A source cut inside a line of the secret leaves none of it.
        let sc = Scrubber::new([&SecretString::from(pem)]);
        for k in 1..l1.len() {
            let text = format!("{}{}", "-".repeat(50), &l1[..k]);
            let (out, cut) = sc.scrub_capped(&text, text.len(), true);
            assert!(cut);
            assert!(!out.contains('M') && out.ends_with(REDACTED), "{k}: {out}");
        }
    }

    fn b64_forms(v: &[u8]) -> Vec<String> {
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD].iter().map(|e| e.encode(v)).collect()
    }

    /// Every encoding of `v` the scrubber promises to catch, built independently.
    fn encodings(v: &str) -> Vec<String> {
        let mut out = vec![v.to_string()];
        out.extend(b64_forms(v.as_bytes()));
        out.extend(b64_forms(format!("someone:{v}").as_bytes()));
        out.push(percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string());
        out.push(lower_escapes(&percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string(), b'%', 2));
        out.push(url::form_urlencoded::byte_serialize(v.as_bytes()).collect());
        let j = serde_json::to_string(v).unwrap();
        out.push(j[1..j.len() - 1].to_string());
        out.push(j[1..j.len() - 1].replace('/', "\\/"));
        out.push(v.encode_utf16().map(|u| format!("\\u{u:04X}")).collect());
        out.push(v.bytes().map(|b| format!("{b:02x}")).collect());
        out.push(v.bytes().map(|b| format!("{b:02X}")).collect());
        out
    }

    /// The secret's own encoded forms (a partial tail is judged against these; the
    /// `user:secret` forms start with the public user name).
    fn plain_forms(v: &str) -> Vec<String> {
        let user = b64_forms(format!("someone:{v}").as_bytes());
        encodings(v).into_iter().filter(|f| !user.contains(f)).collect()
    }

    fn secret_strategy() -> impl Strategy<Value = String> {
        // Printable ASCII (with `"` `\` `/` and space) mixed with non-ASCII.
        proptest::collection::vec(
            prop_oneof![
                6 => (0x20u8..0x7f).prop_map(char::from),
                1 => prop::sample::select(vec!['é', 'ß', '✓', '€', '😀', '中']),
            ],
            MIN_SCRUB_LEN..40,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    /// Lines of a multi-line secret: some long enough to be searched alone, some short.
    fn multi_line_secret() -> impl Strategy<Value = (String, Vec<String>)> {
        let line = prop_oneof![
            3 => r"[A-Za-z0-9+/=_.-]{8,30}",
            1 => r"[-=]{0,7}",
            1 => secret_strategy(),
        ];
        (r"[ \t\r\n]{0,3}", proptest::collection::vec(line, 2..6), prop::sample::select(vec!["\n", "\r\n"]), r"[ \t\r\n]{0,3}")
            .prop_map(|(lead, lines, sep, trail)| (format!("{lead}{}{trail}", lines.join(sep)), lines))
    }

    fn filler() -> impl Strategy<Value = String> {
        r#"[ a-zA-Z0-9:=,{}"\\%/+-]{0,40}"#
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Random secret, every encoding embedded in random text, every cut position:
        /// the output never holds the secret in any encoding nor ends with part of one.
        #[test]
        fn no_encoding_survives_any_cut(secret in secret_strategy(), pre in filler(), post in filler(), which in 0usize..16) {
            prop_assume!(!REDACTED.contains(secret.as_str()));
            let s = SecretString::from(secret.clone());
            let sc = Scrubber::new([&s]);
            let encs = encodings(&secret);
            let enc = &encs[which % encs.len()];
            let text = format!("{pre} {enc} {post}");
            let whole = sc.scrub(&text);
            for e in &encs {
                prop_assert!(!whole.contains(e.as_str()), "form {e:?} survived in {whole:?}");
            }
            let forms = plain_forms(&secret);
            for limit in 0..=text.len() {
                let (out, _) = sc.scrub_capped(&text, limit, true);
                for e in &encs {
                    prop_assert!(!out.contains(e.as_str()), "limit {limit}: form {e:?} in {out:?}");
                }
                if !out.ends_with(REDACTED) {
                    for f in &forms {
                        for k in 1..f.len() {
                            if f.is_char_boundary(k) {
                                prop_assert!(!out.ends_with(&f[..k]), "limit {limit}: ends with {:?} of {f:?}: {out:?}", &f[..k]);
                            }
                        }
                    }
                }
            }
        }

        /// A multi-line secret with surrounding whitespace, printed line by line (each line
        /// in some encoding) and as its trimmed whole: no trimmed line of ≥ 8 characters and
        /// not the trimmed whole survives in any encoding, nor as the tail at any cut.
        #[test]
        fn trimmed_value_and_long_lines_survive_no_cut((secret, lines) in multi_line_secret(), pre in filler(), which in 0usize..16) {
            let trimmed = secret.trim();
            let mut targets: Vec<&str> = lines.iter().map(|l| l.trim()).filter(|l| l.chars().count() >= 8).collect();
            if trimmed.len() >= MIN_SCRUB_LEN {
                targets.push(trimmed);
            }
            prop_assume!(!targets.is_empty());
            for t in &targets {
                prop_assume!(!REDACTED.contains(t));
            }
            let sc = Scrubber::new([&SecretString::from(secret.clone())]);
            let mut text = pre.clone();
            for (i, t) in targets.iter().enumerate() {
                let encs = encodings(t);
                text.push_str(&format!("\n{i}: {}", encs[(which + i) % encs.len()]));
            }
            let whole = sc.scrub(&text);
            for t in &targets {
                for e in encodings(t) {
                    prop_assert!(!whole.contains(e.as_str()), "form {e:?} of {t:?} survived in {whole:?}");
                }
            }
            let forms: Vec<String> = targets.iter().flat_map(|t| plain_forms(t)).collect();
            for limit in 0..=text.len() {
                let (out, _) = sc.scrub_capped(&text, limit, true);
                if !out.ends_with(REDACTED) {
                    for f in &forms {
                        for k in 1..f.len() {
                            if f.is_char_boundary(k) {
                                prop_assert!(!out.ends_with(&f[..k]), "limit {limit}: ends with {:?} of {f:?}: {out:?}", &f[..k]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Parser messages (serde, toml) say what is wrong and where, but "invalid type" errors
/// quote the offending value, which may be a secret: double-quoted text becomes `"…"`.
pub fn unquote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_quote = false;
    for c in text.chars() {
        if c == '"' {
            out.push_str(if in_quote { "…\"" } else { "\"" });
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out
}
