//! Validation of the identifiers the protocol accepts (teams, users).

/// Ids are 1..64 bytes of `[A-Za-z0-9_.:-]` (docs/protocol.md, Frames).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::is_valid_id;

    #[test]
    fn accepts_the_documented_alphabet_only() {
        assert!(is_valid_id("team_1.a:b-C"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("é"));
    }
}
