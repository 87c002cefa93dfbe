//! The rules for credential names and tags, shared by the store (which enforces them on
//! every write) and the service (which checks them before a plugin runs, so the caller
//! gets every problem at once).
//!
//! Text is NFC-normalised, so two spellings that render alike are one name. Characters
//! that hide or reorder text are refused: controls, bidi overrides and isolates,
//! zero-width and other invisible format characters. A name that looks like another
//! must not be able to stand in for it in a listing or an audit record.

use unicode_normalization::UnicodeNormalization as _;

use crate::plugins::FieldError;

/// Longest name, in bytes after normalisation.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest tag, in bytes after normalisation.
pub const MAX_TAG_BYTES: usize = 64;
/// Most tags on one credential (after duplicates are removed).
pub const MAX_TAGS: usize = 32;

/// Why `c` may not appear in a name or tag, if it may not.
fn refused(c: char) -> Option<&'static str> {
    match c {
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' => {
            Some("a bidirectional control character")
        }
        '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' | '\u{00AD}' | '\u{034F}'
        | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' => Some("an invisible (zero-width) character"),
        '\u{2028}' | '\u{2029}' => Some("a line or paragraph separator"),
        c if c.is_control() => Some("a control character"),
        _ => None,
    }
}

/// NFC form of `raw`, checked: 1..=`max` bytes, no refused character, no surrounding
/// whitespace. The message names the first offending character by code point only.
fn text(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    let bad = |message: String| FieldError { field: field.to_owned(), message };
    let v: String = raw.nfc().collect();
    if v.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if v.len() > max {
        return Err(bad(format!("must be at most {max} bytes (UTF-8, after NFC normalisation)")));
    }
    if let Some((c, why)) = v.chars().find_map(|c| refused(c).map(|why| (c, why))) {
        return Err(bad(format!("contains U+{:04X}, {why}", c as u32)));
    }
    if v.trim() != v {
        return Err(bad("must not start or end with whitespace".into()));
    }
    Ok(v)
}

/// A credential name in canonical form, or the problem with it (field `name`).
pub fn name(raw: &str) -> Result<String, FieldError> {
    text("name", raw, MAX_NAME_BYTES)
}

/// Tags in canonical form: each one NFC-normalised and checked (field `tags[i]`),
/// duplicates (after normalisation) dropped keeping the first, at most [`MAX_TAGS`].
pub fn tags(raw: &[String]) -> Result<Vec<String>, Vec<FieldError>> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len().min(MAX_TAGS));
    let mut errors = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        match text(&format!("tags[{i}]"), t, MAX_TAG_BYTES) {
            Ok(t) if !out.contains(&t) => out.push(t),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() && out.len() > MAX_TAGS {
        errors.push(FieldError { field: "tags".into(), message: format!("at most {MAX_TAGS} distinct tags") });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A filter value (an exact name, a name prefix, a tag) in the form stored values have,
/// so a query finds what the same text finds when stored. Checked like a name, under `field`.
pub fn filter(field: &str, raw: &str) -> Result<String, FieldError> {
    text(field, raw, MAX_NAME_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_makes_one_spelling() {
        // "é" precomposed and decomposed are one name.
        assert_eq!(name("caf\u{65}\u{301}").unwrap(), name("caf\u{e9}").unwrap());
        assert_eq!(name("caf\u{65}\u{301}").unwrap(), "caf\u{e9}");
    }

    #[test]
    fn hidden_characters_are_refused_by_code_point() {
        for (s, point) in [
            ("pay\u{202E}lpa", "U+202E"),
            ("a\u{200B}b", "U+200B"),
            ("a\u{2066}b", "U+2066"),
            ("a\u{FEFF}", "U+FEFF"),
            ("a\nb", "U+000A"),
            ("a\u{7F}", "U+007F"),
        ] {
            let e = name(s).unwrap_err();
            assert_eq!(e.field, "name");
            assert!(e.message.contains(point), "{s:?}: {}", e.message);
        }
        assert!(name(" x").is_err());
        assert!(name("").is_err());
        assert!(name(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert_eq!(name("prod · Ålpaca 🔑").unwrap(), "prod · Ålpaca 🔑");
    }

    #[test]
    fn tags_dedup_after_nfc_and_name_their_index() {
        let t = tags(&["b".into(), "caf\u{e9}".into(), "caf\u{65}\u{301}".into(), "b".into()]).unwrap();
        assert_eq!(t, ["b", "caf\u{e9}"]);
        let e = tags(&["ok".into(), "x\u{200D}y".into()]).unwrap_err();
        assert_eq!(e[0].field, "tags[1]");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(tags(&many).unwrap_err()[0].field, "tags");
        // Duplicates do not count against the cap.
        let dup: Vec<String> = (0..MAX_TAGS * 3).map(|i| format!("t{}", i % MAX_TAGS)).collect();
        assert_eq!(tags(&dup).unwrap().len(), MAX_TAGS);
    }
}
